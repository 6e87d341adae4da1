import Foundation

/// The random source of randomised tests: seeded, and the seed printed, so
/// a failure can be replayed with `WSGATE_TEST_SEED=<seed> swift test`.
struct SeededRandom: RandomNumberGenerator {
    let seed: UInt64
    private var state: UInt64

    init(test name: String) {
        if let text = ProcessInfo.processInfo.environment["WSGATE_TEST_SEED"], let fixed = UInt64(text) {
            seed = fixed
        } else {
            seed = UInt64.random(in: 1...UInt64.max)
        }
        state = seed
        print("\(name): seed \(seed) (replay with WSGATE_TEST_SEED=\(seed))")
    }

    /// SplitMix64: small, fast, and the same sequence for the same seed on every platform.
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

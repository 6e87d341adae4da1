import Dispatch

// The entry point. Swift's async `@main` ends in `dispatchMain()` on Linux,
// and valgrind (Debian 12's 3.19: callgrind for instruction counts, massif for
// heap profiles) crashes on any program that calls it. So the command runs in
// a detached task on the global executor while the main thread waits: the
// same threads do the same work, and the binary stays profilable. Nothing in
// wsgate runs on the main actor.
let finished = DispatchSemaphore(value: 0)
Task.detached {
    await WSGateCommand.main()
    finished.signal()
}
finished.wait()

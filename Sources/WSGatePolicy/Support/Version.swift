public enum WSGateVersion { public static let string = "0.1.0" }

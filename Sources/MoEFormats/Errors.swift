/// Every failure the library reports to a user. Each renders as one line that names
/// the file (and line or key) at fault; the command-line layer prints it and exits
/// non-zero. Library code never traps on user input.
public enum MoETuneError: Error, CustomStringConvertible, Equatable {
    /// A file that is missing, unreadable or malformed.
    case file(path: String, message: String)
    /// One line of a line-oriented file (JSONL) is malformed.
    case line(path: String, line: Int, message: String)
    /// A key of a configuration file has a bad value or should not be there.
    case config(path: String, key: String, message: String)
    /// A command-line value or a combination of settings that cannot work.
    case invalid(String)

    /// The line a user sees: whatever a message holds (a name a file gave that no caller
    /// escaped, a path), it stays one printable line of bounded length (Printable).
    public var description: String {
        let raw: String
        switch self {
        case let .file(path, message): raw = "\(path): \(message)"
        case let .line(path, line, message): raw = "\(path):\(line): \(message)"
        case let .config(path, key, message): raw = "\(path): \(key): \(message)"
        case let .invalid(message): raw = message
        }
        return Printable.text(raw, limit: MoETuneError.maxLength)
    }

    /// Characters of a message kept before it is cut (each name in it is cut far earlier).
    public static let maxLength = 4000
}

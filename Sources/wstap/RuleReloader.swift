import Dispatch
import WSTapFormats
import WSTapProxy
import WSTapRelay
import WSTapRules

#if canImport(Glibc)
import Glibc
#endif

/// `--rules FILE` while the proxy runs: the file is looked at every second and read again when its
/// modification time, size or inode changes (editors that save by renaming change the inode). A file
/// that does not parse or cannot be read keeps the rules in force, and says so once per version of the file.
final class RuleReloader: @unchecked Sendable {
    private let options: RuleOptions
    private let book: RuleBook
    private let path: String
    private let hooks: ExecHooks?
    private let queue = DispatchQueue(label: "wstap.rules-reload")
    private var timer: DispatchSourceTimer?
    // Touched on `queue` only.
    private var seen: FileVersion?

    struct FileVersion: Equatable {
        var inode: UInt64
        var size: Int64
        var seconds: Int
        var nanoseconds: Int
    }

    init(options: RuleOptions, book: RuleBook, path: String, hooks: ExecHooks?) {
        self.options = options
        self.book = book
        self.path = path
        self.hooks = hooks
        seen = Self.version(of: path)
    }

    func start() {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(1), repeating: .seconds(1), leeway: .milliseconds(100))
        timer.setEventHandler { [weak self] in self?.check() }
        timer.resume()
        self.timer = timer
    }

    private func check() {
        let now = Self.version(of: path)
        guard now != seen else { return }
        seen = now
        switch options.read() {
        case .success(let rules):
            // New hooks start now, so one that cannot start says so before a message needs it.
            hooks?.start(ChangeSettings.hookCommands(in: rules))
            book.replace(with: RuleEngine(rules: rules))
            say("\(path) reloaded: \(rules.count) rule\(rules.count == 1 ? "" : "s") in force from the next message of every connection")
        case .failure(.unreadable(let message)), .failure(.invalid(let message)):
            say("\(message); \(keeping)")
        }
    }

    private var keeping: String {
        let count = book.engine.rules.count
        return "keeping the \(count) rule\(count == 1 ? "" : "s") in force"
    }

    private func say(_ line: String) {
        OutputFile.standardError.write(Array("wstap: \(line)\n".utf8))
    }

    static func version(of path: String) -> FileVersion? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileVersion(inode: UInt64(info.st_ino), size: Int64(info.st_size), seconds: info.st_mtim.tv_sec, nanoseconds: info.st_mtim.tv_nsec)
    }
}

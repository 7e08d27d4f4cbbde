import WSTapWire

/// The lexical pieces filters and rules share, over Unicode scalars (see `FilterParser` for why not
/// characters): quoted strings, `/regular expressions/`, hex bytes and sizes. Positions are scalar
/// indexes; a failure says where and what, and each parser words it as its own error.
public enum ScalarLexer {
    public struct Failure: Error {
        public let position: Int
        public let message: String
    }

    /// `"..."` starting at `index`, with `\" \\ \/ \n \t \r \uXXXX` (JSON's escapes, so what wstap
    /// prints JSON-escaped reads back).
    public static func quoted(_ chars: [Unicode.Scalar], _ index: inout Int) throws(Failure) -> String {
        let open = index
        index += 1
        var out = String.UnicodeScalarView()
        while index < chars.count {
            let c = chars[index]
            index += 1
            if c == "\"" { return String(out) }
            guard c == "\\" else { out.append(c); continue }
            guard index < chars.count else { break }
            let e = chars[index]
            index += 1
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "\"", "\\", "/": out.append(e)
            case "u":
                guard index + 4 <= chars.count, let code = UInt32(string(chars[index..<(index + 4)]), radix: 16), let scalar = Unicode.Scalar(code) else {
                    throw Failure(position: index - 2, message: "\\u takes four hex digits of a character that is not a surrogate")
                }
                out.append(scalar)
                index += 4
            default:
                throw Failure(position: index - 2, message: "unknown escape '\\\(e)' (use \\\" \\\\ \\n \\t \\r \\uXXXX)")
            }
        }
        throw Failure(position: open, message: "the quote is not closed")
    }

    /// `/.../` starting at `index`: `\/` is a slash; any other escape stays for the regular expression
    /// (`\\`, `\d`). Returns the pattern; flags after the closing slash are the caller's.
    public static func regex(_ chars: [Unicode.Scalar], _ index: inout Int) throws(Failure) -> String {
        let open = index
        index += 1
        var pattern = String.UnicodeScalarView()
        while index < chars.count, chars[index] != "/" {
            if chars[index] == "\\", index + 1 < chars.count {
                if chars[index + 1] != "/" { pattern.append("\\") }
                pattern.append(chars[index + 1])
                index += 2
                continue
            }
            pattern.append(chars[index])
            index += 1
        }
        guard index < chars.count else { throw Failure(position: open, message: "the regular expression is not closed with '/'") }
        index += 1
        return String(pattern)
    }

    /// The pattern as it is written between slashes: the inverse of `regex` (`\X` pairs kept, a bare
    /// `/` escaped).
    public static func slashesEscaped(_ pattern: String) -> String {
        var out = String.UnicodeScalarView()
        var escaped = false
        for scalar in pattern.unicodeScalars {
            if escaped {
                escaped = false
            } else if scalar == "\\" {
                escaped = true
            } else if scalar == "/" {
                out.append("\\")
            }
            out.append(scalar)
        }
        return String(out)
    }

    /// `89504e47`, `de ad be ef`, `de:ad`.
    public static func hexBytes(_ text: String) -> [UInt8]? {
        Hex.decode(text.utf8.filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: ":") })
    }

    /// 12, 4K (4096), 1.5M (1024²), 0x10.
    public static func size(_ text: String) -> Double? {
        var digits = Substring(text)
        var scale = 1.0
        if let last = digits.last, "kKmM".contains(last) {
            scale = "kK".contains(last) ? 1024 : 1024 * 1024
            digits = digits.dropLast()
        }
        if digits.hasPrefix("0x"), let n = UInt64(digits.dropFirst(2), radix: 16) { return Double(n) * scale }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isNumber || $0 == "." || $0 == "-" || $0 == "+" || $0 == "e" || $0 == "E" }),
              let n = Double(digits), n.isFinite else { return nil }
        return n * scale
    }

    public static func string(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}

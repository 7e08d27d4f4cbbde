/// The ways a sans-IO parser's input is cut into reads in split tests: a parser's output must not
/// depend on where reads end, and these are the cuts that find the places where it does.
public enum Splits {
    /// Every way of cutting `count` bytes once (as piece sizes), then byte by byte. The whole input
    /// (no cut) is not among them: it is what the others are compared with.
    public static func everyPoint(_ count: Int) -> [[Int]] {
        guard count > 1 else { return [] }
        return (1..<count).map { [$0, count - $0] } + [Array(repeating: 1, count: count)]
    }

    /// `rounds` random cuttings of `count` bytes into pieces of 1 to `largest` bytes, from `seed`.
    public static func random(_ count: Int, rounds: Int, largest: Int, seed: UInt64) -> [[Int]] {
        var rng = SplitMix(seed: seed)
        return (0..<rounds).map { _ in
            var sizes: [Int] = []
            var left = count
            while left > 0 {
                let size = min(left, 1 + rng.below(largest))
                sizes.append(size)
                left -= size
            }
            return sizes
        }
    }

    /// `bytes` cut into pieces of `sizes` (cycled; what is left after the last size is one piece).
    public static func pieces(_ bytes: [UInt8], sizes: [Int]) -> [[UInt8]] {
        guard !sizes.isEmpty, !bytes.isEmpty else { return [bytes] }
        var pieces: [[UInt8]] = []
        var start = 0
        var next = 0
        while start < bytes.count {
            let end = min(bytes.count, start + max(1, sizes[next % sizes.count]))
            pieces.append(Array(bytes[start..<end]))
            start = end
            next += 1
        }
        return pieces
    }

    /// Runs `run` on the steps as they are, then again with one step at a time cut by `everyPoint` and
    /// `random` (the other steps whole); returns a line for each cutting whose output differs (empty:
    /// none did; at most five are reported).
    /// Steps longer than `everyPointUpTo` get only the random cuttings (every point of a large step
    /// would be quadratic).
    public static func verify<Output: Equatable>(_ steps: [Step], everyPointUpTo: Int = 4096, randomRounds: Int = 20, largest: Int = 64,
                                                 seed: UInt64 = 1, run: ([Step]) -> Output) -> [String] {
        let whole = run(steps)
        var failures: [String] = []
        for (index, step) in steps.enumerated() {
            var cuttings = step.1.count <= everyPointUpTo ? everyPoint(step.1.count) : []
            cuttings += random(step.1.count, rounds: randomRounds, largest: largest, seed: seed &+ UInt64(index))
            for sizes in cuttings {
                let cut = steps.enumerated().flatMap { i, s in i == index ? pieces(s.1, sizes: sizes).map { (s.0, $0) } : [s] }
                if run(cut) != whole {
                    failures.append("step \(index) (\(step.0)) cut into \(sizes.prefix(8))\(sizes.count > 8 ? "…" : ""): output differs")
                    if failures.count >= 5 { return failures }
                }
            }
        }
        return failures
    }
}

import CPcap
import WSTapDissect

/// Packet times as libpcap reports them, turned into `Timestamp`s. A capture file may claim any time
/// (pcapng timestamps are 64-bit counts of a resolution the file chooses), but a `Timestamp` holds
/// nanoseconds in an Int64, which ends in the year 2262: later times are clamped to that end and
/// counted, so the reader can say so instead of trapping on the overflow.
struct PacketTime {
    /// Whether libpcap's `tv_usec` holds nanoseconds (PCAP_TSTAMP_PRECISION_NANO) or microseconds.
    let nanosecondFraction: Bool
    /// Packets whose time could not be represented and was clamped.
    private(set) var clamped = 0

    init(nanosecondFraction: Bool) { self.nanosecondFraction = nanosecondFraction }

    mutating func timestamp(of header: pcap_pkthdr) -> Timestamp {
        let (time, exact) = Self.timestamp(seconds: Int64(header.ts.tv_sec), fraction: Int64(header.ts.tv_usec),
                                           fractionUnit: nanosecondFraction ? 1 : 1000)
        if !exact { clamped += 1 }
        return time
    }

    /// `seconds` plus `fraction × fractionUnit` nanoseconds, clamped to 0 … Int64.max nanoseconds;
    /// `exact` is false when it had to be clamped.
    static func timestamp(seconds: Int64, fraction: Int64, fractionUnit: Int64) -> (time: Timestamp, exact: Bool) {
        let (whole, overflowWhole) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (part, overflowPart) = fraction.multipliedReportingOverflow(by: fractionUnit)
        let (sum, overflowSum) = whole.addingReportingOverflow(part)
        if overflowWhole || overflowPart || overflowSum {
            let negative = overflowWhole ? seconds < 0 : overflowPart ? fraction < 0 : whole < 0
            return (Timestamp(nanoseconds: negative ? 0 : .max), false)
        }
        if sum < 0 { return (Timestamp(nanoseconds: 0), false) }
        return (Timestamp(nanoseconds: sum), true)
    }
}

import ArgumentParser
import Foundation
import WSTapProxy

struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Show wstap's certificate authority and export its certificate.",
        discussion: """
            The CA is created on first use. Clients must trust its certificate to accept intercepted TLS: \
            see certs/README.md for Chromium, Firefox, Debian, Python and Node.
            """
    )

    @OptionGroup var ca: CAOptions

    @Option(name: .long, help: ArgumentHelp("Write the CA certificate as PEM to this file ('-' for standard output).", valueName: "file"))
    var exportPem: String?

    @Option(name: .long, help: ArgumentHelp("Write the CA certificate as DER to this file.", valueName: "file"))
    var exportDer: String?

    func run() throws {
        let authority: CertificateAuthority
        do {
            authority = try CertificateAuthority.loadOrCreate(directory: ca.directory)
        } catch {
            fail("\(error)")
        }
        if let exportPem {
            if exportPem == "-" {
                print(authority.certificatePEM, terminator: "")
            } else {
                write(Data(authority.certificatePEM.utf8), to: exportPem, flag: "--export-pem")
            }
        }
        if let exportDer { write(Data(authority.certificateDER), to: exportDer, flag: "--export-der") }
        if exportPem == nil && exportDer == nil {
            print("CA directory:   \(authority.directory)")
            print("certificate:    \(authority.certificatePath)")
            print("private key:    \(authority.keyPath) (owner-only)")
            print("subject:        \(authority.certificate.subject)")
            print("valid until:    \(authority.certificate.notValidAfter)")
        }
    }

    private func write(_ data: Data, to path: String, flag: String) {
        do {
            // A certificate is public: readable by everyone, whatever the umask.
            try CertificateAuthority.writeFile(Array(data), to: path, mode: 0o644)
        } catch {
            fail("\(flag): \(error)")
        }
    }
}

import ArgumentParser
import WSTapProxy

/// Where wstap's CA lives; shared by `proxy` and `ca`.
struct CAOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Directory of wstap's CA (created on first use; default $WSTAP_CA_DIR or ~/.wstap).", valueName: "dir"))
    var caDir: String?

    var directory: String { caDir ?? CertificateAuthority.defaultDirectory }
}

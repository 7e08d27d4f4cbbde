import ArgumentParser
@main struct WSTapCommand: ParsableCommand { func run() throws {} }

// kleakctl: the client of the kleakd query socket. The socket and the daemon
// mode arrive together; until then it says so instead of pretending.
#include <CLI/CLI.hpp>

#include <iostream>

#include "version.h"

int main(int argc, char** argv) {
    CLI::App app{"kleakctl - query a running kleakd (current leaks, stats, the kleak report)"};
    app.set_version_flag("--version", std::string("kleakctl ") + kKleakdVersion);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    std::cerr << "kleakctl: not yet: kleakd has no query socket in this version; use `kleakd trace` for live "
                 "leaks or `kleakd record` + `kleakd report`\n";
    return 2;
}

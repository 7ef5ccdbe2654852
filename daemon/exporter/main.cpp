// kleakd-exporter: serves kleakd's state as Prometheus metrics on GET
// /metrics, one fresh query of the daemon's Unix socket per scrape; or, with
// --textfile, writes one scrape for node_exporter's textfile collector and
// exits. An unprivileged process of its own, so the daemon never opens a
// network socket (README, "Prometheus").
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <iostream>
#include <thread>

#include "app/logging.h"
#include "client/client.h"
#include "exporter/http_server.h"
#include "exporter/listen_socket.h"
#include "exporter/scrape.h"
#include "exporter/textfile.h"
#include "version.h"

namespace {

using namespace kleak::exporter;

struct Options {
    std::string socket;
    std::string listen = kDefaultListen;
    std::size_t max_sites = kDefaultMaxSites;
    double timeout_seconds = 10;
    std::string textfile;
};

int write_once(Scraper& scraper, const std::string& path) {
    const std::string text = scraper.scrape(Format::prometheus_text);
    if (const auto error = write_textfile(path, text)) {
        spdlog::error("{}", *error);
        return 1;
    }
    // kleakd_up 0 is written too (node_exporter then shows the daemon down),
    // but the run says so in its exit status for the timer unit's log.
    return scraper.last_failure() ? 3 : 0;
}

int serve(Scraper& scraper, const std::string& address) {
    // SIGTERM/SIGINT are blocked before any thread starts (httplib's pool
    // inherits the mask) and taken with sigwait: no handler.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    ListenSocket listening;
    try {
        listening = listen_socket(address);
    } catch (const ListenError& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
    MetricsServer server([&scraper](Format format) { return scraper.scrape(format); });
    server.adopt(listening.fd);
    spdlog::info("serving /metrics on {}", listening.description);
    bool served = true;
    std::thread http([&] { served = server.serve(); });
    int signal = 0;
    sigwait(&stop_signals, &signal);
    spdlog::info("{}: stopping", strsignal(signal));
    server.stop();
    http.join();
    if (!served) spdlog::error("accepting connections on {} failed", listening.description);
    return served ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "kleakd-exporter: kleakd's leaks and counters as Prometheus metrics.\n"
        "Each scrape of GET /metrics queries kleakd over its Unix socket; when kleakd does not answer, the "
        "scrape still succeeds with kleakd_up 0 and the reason is logged. Under systemd, "
        "kleakd-exporter.socket passes the listening socket and --listen is not used.",
        "kleakd-exporter"};
    Options options;
    app.add_option("--socket,-s", options.socket,
                   "kleakd's query socket (default: $KLEAKD_SOCKET, else /run/kleakd/kleakd.sock)");
    app.add_option("--listen,-l", options.listen,
                   "Address to serve HTTP on when systemd passes no socket: HOST:PORT, :PORT (every address) or "
                   "[IPV6]:PORT")
        ->capture_default_str();
    app.add_option("--max-sites", options.max_sites,
                   "Call sites with their own series, most suspect first (growing first); the rest are summed "
                   "into site=\"other\"")
        ->check(CLI::Range(std::size_t{1}, kMaxMaxSites))
        ->capture_default_str();
    app.add_option("--timeout", options.timeout_seconds, "Seconds to wait for kleakd's replies in one scrape")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    app.add_option("--textfile", options.textfile,
                   "Write one scrape to FILE for node_exporter's textfile collector (atomically: a temporary file "
                   "renamed over it), then exit; name it *.prom in the collector's directory. Exit status 3: "
                   "written, but kleakd did not answer (kleakd_up 0)");
    app.set_version_flag("--version", std::string("kleakd-exporter ") + kKleakdVersion);
    CLI11_PARSE(app, argc, argv);

    kleak::setup_logging("kleakd-exporter");
    ScrapeOptions scrape;
    scrape.socket = kleak::ctl::socket_path(options.socket);
    scrape.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(options.timeout_seconds * 1000)));
    scrape.metrics.max_sites = options.max_sites;
    Scraper scraper(scrape);
    if (!options.textfile.empty()) return write_once(scraper, options.textfile);
    return serve(scraper, options.listen);
}

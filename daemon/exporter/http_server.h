// The HTTP side: cpp-httplib serving GET (and HEAD) /metrics and nothing
// else (any other path or method is a 404) on a listening socket it is given,
// the one systemd passed (socket activation) or one listen_socket.h bound.
// cpp-httplib 0.11 has no call that adopts a socket, but keeps it in the
// protected `svr_sock_` that listen_after_bind() serves: MetricsServer sets
// it. prometheus-cpp's own Exposer (civetweb) only binds addresses itself.
#pragma once

#include <httplib.h>

#include <functional>
#include <string>

#include "exporter/exposition.h"

namespace kleak::exporter {

class MetricsServer : private httplib::Server {
public:
    // `scrape` is called once per GET /metrics, on one of httplib's threads.
    explicit MetricsServer(std::function<std::string(Format)> scrape);

    // Takes over `listen_fd`, a bound and listening TCP socket; stop()
    // closes it. Call before serve() and stop().
    void adopt(int listen_fd);
    // Accepts and serves connections until stop(). False if accepting failed.
    bool serve();
    // From any thread, also before serve() runs: serve() returns.
    void stop();
};

}  // namespace kleak::exporter

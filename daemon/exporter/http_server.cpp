#include "exporter/http_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

namespace kleak::exporter {

MetricsServer::MetricsServer(std::function<std::string(Format)> scrape) {
    Get("/metrics", [scrape = std::move(scrape)](const httplib::Request& req, httplib::Response& res) {
        const Format format = negotiate_format(req.get_header_value("Accept"));
        res.set_content(scrape(format), std::string(content_type(format)));
    });
    // Anything else: a short text body rather than httplib's empty one.
    set_error_handler([](const httplib::Request& req, httplib::Response& res) {
        if (res.status == 404)
            res.set_content("kleakd-exporter serves /metrics only; " + req.path + " is not found\n", "text/plain");
    });
    // A slow client cannot hold a thread for long.
    set_read_timeout(10);
    set_write_timeout(10);
    set_keep_alive_timeout(30);
}

void MetricsServer::adopt(int listen_fd) {
    // httplib's accept loop expects a blocking socket (systemd passes it
    // blocking unless the unit says NonBlocking=yes).
    const int flags = ::fcntl(listen_fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK)) ::fcntl(listen_fd, F_SETFL, flags & ~O_NONBLOCK);
    svr_sock_ = listen_fd;
}

bool MetricsServer::serve() { return listen_after_bind(); }

// httplib's own stop() does nothing until its loop runs; closing the socket
// works either way: the loop ends when it finds svr_sock_ invalid or its
// accept() fails.
void MetricsServer::stop() {
    const int fd = svr_sock_.exchange(INVALID_SOCKET);
    if (fd == INVALID_SOCKET) return;
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
}

}  // namespace kleak::exporter

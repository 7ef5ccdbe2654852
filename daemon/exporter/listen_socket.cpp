#include "exporter/listen_socket.h"

#include <netdb.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace kleak::exporter {

namespace {

void split(const std::string& address, std::string& host, std::string& port) {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos || colon + 1 == address.size())
        throw ListenError("--listen \"" + address + "\" needs a port: HOST:PORT, :PORT or [IPV6]:PORT");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
}

}  // namespace

ListenSocket bind_listen_socket(const std::string& address) {
    std::string host, port;
    split(address, host, port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0)
        throw ListenError("--listen \"" + address + "\": " + ::gai_strerror(rc));
    // With no host, the IPv6 wildcard first: it takes IPv4 too (dual stack);
    // the next address if this host has no IPv6.
    std::vector<const addrinfo*> candidates;
    for (const addrinfo* a = found; a; a = a->ai_next)
        if (a->ai_family == AF_INET6) candidates.push_back(a);
    for (const addrinfo* a = found; a; a = a->ai_next)
        if (a->ai_family != AF_INET6) candidates.push_back(a);
    std::string error;
    int fd = -1;
    for (const addrinfo* a : candidates) {
        fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            error = std::strerror(errno);
            continue;
        }
        const int one = 1, zero = 0;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6 && host.empty()) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
            error.clear();
            break;
        }
        error = std::strerror(errno);
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(found);
    if (fd < 0) throw ListenError("cannot listen on " + address + ": " + error);
    return {fd, false, address};
}

ListenSocket listen_socket(const std::string& address) {
    const int n = sd_listen_fds(1);
    if (n < 0) throw ListenError(std::string("reading the sockets systemd passed failed: ") + std::strerror(-n));
    if (n == 0) return bind_listen_socket(address);
    if (n > 1)
        throw ListenError("systemd passed " + std::to_string(n) +
                          " sockets; kleakd-exporter.socket must have exactly one ListenStream=");
    if (sd_is_socket(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
        throw ListenError("the socket systemd passed is not a listening stream socket (ListenStream= in "
                          "kleakd-exporter.socket)");
    return {SD_LISTEN_FDS_START, true, "the socket systemd passed"};
}

}  // namespace kleak::exporter

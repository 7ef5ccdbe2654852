// Where kleakd-exporter listens: the socket systemd passed
// (kleakd-exporter.socket, sd_listen_fds), else a TCP socket bound to
// --listen. Errors are ListenError with a message saying what to change.
#pragma once

#include <stdexcept>
#include <string>

namespace kleak::exporter {

// The address used when run by hand; the packaged unit listens where
// kleakd-exporter.socket says (the same port). 9785 sits in the range
// Prometheus keeps for exporters (9100-9999).
inline constexpr const char* kDefaultListen = ":9785";

class ListenError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct ListenSocket {
    int fd = -1;
    bool from_systemd = false;
    std::string description;  // for the log: "127.0.0.1:9785", "the socket systemd passed"
};

// "HOST:PORT", ":PORT" (every address), "[V6]:PORT".
ListenSocket bind_listen_socket(const std::string& address);
// systemd's socket if it passed exactly one listening stream socket, else
// bind_listen_socket(address). More than one, or one of another kind, is an
// error (a unit misconfigured).
ListenSocket listen_socket(const std::string& address);

}  // namespace kleak::exporter

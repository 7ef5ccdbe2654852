#include "client/client.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace kleak::ctl {

std::filesystem::path socket_path(const std::string& from_option) {
    if (!from_option.empty()) return from_option;
    if (const char* env = std::getenv("KLEAKD_SOCKET"); env && *env) return env;
    return kDefaultSocket;
}

Client::Client(const std::filesystem::path& socket)
    : socket_(socket), reader_(std::numeric_limits<std::size_t>::max()) {  // replies can be large
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = socket.string();
    if (path.size() >= sizeof addr.sun_path) throw ClientError("socket path " + path + " is too long");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw ClientError(std::string("cannot create a socket: ") + std::strerror(errno));
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return;
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    switch (err) {
        case ENOENT:
            throw ClientError(
                "kleakd is not running: no socket at " + path +
                " (start it with `systemctl start kleakd`, or point --socket/KLEAKD_SOCKET at its socket)");
        case ECONNREFUSED:
            throw ClientError("kleakd is not running: nothing listens on " + path + " (a stale socket file)");
        case EACCES:
        case EPERM:
            throw ClientError("permission denied on " + path +
                              ": run as root or as a member of the socket's group (kleakd)");
        default:
            throw ClientError("cannot connect to " + path + ": " + std::strerror(err));
    }
}

Client::~Client() {
    if (fd_ >= 0) ::close(fd_);
}

void Client::set_timeout(std::chrono::milliseconds timeout) {
    timeout_ = timeout;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

namespace {

[[noreturn]] void timed_out(const std::filesystem::path& socket, std::chrono::milliseconds timeout) {
    throw ClientError("kleakd did not answer on " + socket.string() + " within " +
                      std::to_string(timeout.count() / 1000.0).substr(0, 5) +
                      " s (is it stuck? `systemctl status kleakd`; --timeout 0 waits forever)");
}

}  // namespace

proto::Response Client::call(const proto::Request& request) {
    const std::string line = proto::encode_request(request);
    for (std::size_t sent = 0; sent < line.size();) {
        const ssize_t n = ::send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) timed_out(socket_, timeout_);
            // The daemon refuses a peer by replying and closing: read that reply.
            if (errno == EPIPE || errno == ECONNRESET) break;
            throw ClientError("sending to " + socket_.string() + " failed: " + std::strerror(errno));
        }
        sent += static_cast<std::size_t>(n);
    }
    return next(request.id);
}

proto::Response Client::next(std::uint64_t id) {
    std::string reply;
    char buf[65536];
    while (reader_.next(reply) != proto::LineReader::Status::line) {
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) timed_out(socket_, timeout_);
        if (n <= 0) throw ClientError("kleakd closed the connection without replying (did it stop?)");
        reader_.feed({buf, static_cast<std::size_t>(n)});
    }
    std::string why;
    auto response = proto::decode_response(reply, why);
    if (!response) throw ClientError("kleakd sent a reply this client cannot read: " + why);
    if (response->ok && response->id != id) throw ClientError("kleakd answered another request (id mismatch)");
    return std::move(*response);
}

}  // namespace kleak::ctl

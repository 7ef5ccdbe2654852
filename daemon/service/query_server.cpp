#include "service/query_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kernel/startup_error.h"

namespace kleak::service {

namespace {

sockaddr_un unix_address(const std::filesystem::path& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string text = path.string();
    if (text.size() >= sizeof addr.sun_path)
        throw StartupError("socket path " + text + " is too long (at most " + std::to_string(sizeof addr.sun_path - 1) +
                           " bytes)");
    std::memcpy(addr.sun_path, text.c_str(), text.size() + 1);
    return addr;
}

// True if something accepts connections at `path`.
bool someone_listens(const sockaddr_un& addr) {
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

UniqueFd listen_unix(const std::filesystem::path& path, unsigned mode, std::optional<gid_t> gid) {
    const sockaddr_un addr = unix_address(path);
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec)
        throw StartupError("cannot create the socket directory " + path.parent_path().string() + ": " + ec.message());

    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            throw StartupError(path.string() + " exists and is not a socket; remove it or set socket.path");
        if (someone_listens(addr)) throw StartupError("another kleakd already serves " + path.string());
        ::unlink(path.c_str());  // stale: its daemon died without cleaning up
    }

    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw StartupError(describe_errno("creating the query socket failed", -errno));
    // Bind with a umask that leaves no window where the socket is more open
    // than `mode`.
    const mode_t old_umask = ::umask(0777 & ~mode);
    const int rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int bind_errno = errno;
    ::umask(old_umask);
    if (rc != 0)
        throw StartupError(describe_errno("binding the query socket " + path.string() + " failed", -bind_errno));
    if (::chmod(path.c_str(), mode) != 0)
        throw StartupError(describe_errno("chmod of " + path.string() + " failed", -errno));
    if (gid && ::chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0)
        throw StartupError(describe_errno("chown of " + path.string() + " to its group failed", -errno));
    if (::listen(fd.get(), 64) != 0)
        throw StartupError(describe_errno("listen on " + path.string() + " failed", -errno));
    return fd;
}

QueryServer::QueryServer(EventLoop& loop, UniqueFd listener, AccessPolicy policy, QueryHandler& handler,
                         ServerLimits limits)
    : loop_(loop), listener_(std::move(listener)), policy_(policy), handler_(handler), limits_(limits) {
    // An activated socket may come blocking; accept must never block the loop.
    const int flags = ::fcntl(listener_.get(), F_GETFL);
    if (flags >= 0) ::fcntl(listener_.get(), F_SETFL, flags | O_NONBLOCK);
    loop_.watch(listener_.get(), [this]() { accept_clients(); });
}

QueryServer::~QueryServer() {
    while (!clients_.empty()) close_client(clients_.begin()->first);
    loop_.unwatch(listener_.get());
}

void QueryServer::accept_clients() {
    for (int i = 0; i < 16; ++i) {  // bounded: other fds get their turn
        UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!fd) return;  // EAGAIN, or an aborted connection
        const PeerVerdict verdict = check_peer(fd.get(), policy_);
        std::string refusal;
        if (!verdict.allowed) {
            refusal = verdict.reason;
        } else if (clients_.size() >= limits_.max_clients) {
            refusal = "too many clients (" + std::to_string(limits_.max_clients) + "); try again later";
        }
        if (!refusal.empty()) {
            ++counters_.refused;
            const std::string line = proto::encode_error(std::nullopt, {proto::ErrorCode::not_permitted, refusal});
            [[maybe_unused]] const ssize_t n = ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (log_budget_++ % 100 == 0) spdlog::warn("refused a query from {}: {}", verdict.peer, refusal);
            continue;
        }
        ++counters_.accepted;
        const int raw = fd.get();
        auto client = std::make_unique<Client>();
        client->fd = std::move(fd);
        clients_.emplace(raw, std::move(client));
        loop_.watch_events(raw, EPOLLIN | EPOLLRDHUP, [this, raw](std::uint32_t events) { on_client(raw, events); });
    }
}

void QueryServer::on_client(int fd, std::uint32_t events) {
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    Client& client = *it->second;
    if (events & EPOLLERR) {
        close_client(fd);
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
        receive(client);
        if (!clients_.contains(fd)) return;
    }
    serve(client);
    flush(client);
}

void QueryServer::receive(Client& client) {
    const int fd = client.fd.get();
    char buf[16384];
    // Bounded per wake-up, so one chatty client cannot starve the rings; and
    // nothing more is read while earlier requests are still unanswered.
    for (int round = 0; round < 4 && client.reader.buffered() < proto::kMaxRequestBytes; ++round) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) {  // peer closed its side: answer what is complete, then go
            client.close_after_flush = true;
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            close_client(fd);
            return;
        }
        if (client.subscription) continue;  // a stream: input is ignored, only a close matters
        client.reader.feed({buf, static_cast<std::size_t>(n)});
    }
}

void QueryServer::serve(Client& client) {
    // Answer buffered requests only while the replies before them are small:
    // a client that sends many requests and reads nothing gets its replies
    // produced as fast as it reads them, not all at once.
    client.lines_waiting = false;
    if (client.subscription) return;
    std::string line;
    for (int answered = 0;; ++answered) {
        if (answered == kRequestsPerWakeup || client.unsent.size() - client.sent >= kPauseUnsentBytes) {
            client.lines_waiting = client.reader.buffered() > 0;
            return;
        }
        const auto status = client.reader.next(line);
        if (status == proto::LineReader::Status::need_more) return;
        if (status == proto::LineReader::Status::too_large) {
            ++counters_.errors;
            client.unsent += proto::encode_error(std::nullopt, proto::line_too_large_error());
            continue;
        }
        answer(client, line);
        if (client.subscription) return;
    }
}

void QueryServer::answer(Client& client, const std::string& line) {
    ++counters_.requests;
    const proto::DecodedRequest decoded = proto::decode_request(line);
    if (decoded.error) {
        ++counters_.errors;
        client.unsent += proto::encode_error(decoded.id, *decoded.error);
        return;
    }
    // A query that fails (a bad_alloc building a large report, a bug) is
    // that client's error, never the daemon's end.
    std::variant<nlohmann::json, proto::Error, Subscribe> outcome;
    try {
        outcome = handler_.handle(*decoded.request);
    } catch (const std::bad_alloc&) {
        outcome = proto::Error{proto::ErrorCode::internal, "out of memory while answering " +
                                                               std::string(proto::op_name(decoded.request->op))};
    } catch (const std::exception& e) {
        outcome = proto::Error{proto::ErrorCode::internal,
                               std::string(proto::op_name(decoded.request->op)) + " failed: " + e.what()};
    }
    if (auto* error = std::get_if<proto::Error>(&outcome)) {
        ++counters_.errors;
        client.unsent += proto::encode_error(decoded.request->id, *error);
    } else if (auto* subscribe = std::get_if<Subscribe>(&outcome)) {
        client.unsent += proto::encode_result(decoded.request->id, subscribe->first);
        client.subscription = *decoded.request;
    } else {
        client.unsent += proto::encode_result(decoded.request->id, std::get<nlohmann::json>(outcome));
    }
}

void QueryServer::flush(Client& client) {
    const int fd = client.fd.get();
    while (client.sent < client.unsent.size()) {
        const ssize_t n = ::send(fd, client.unsent.data() + client.sent, client.unsent.size() - client.sent,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            close_client(fd);  // EPIPE/ECONNRESET: it went away mid-reply
            return;
        }
        client.sent += static_cast<std::size_t>(n);
    }
    if (client.sent == client.unsent.size()) {
        client.unsent.clear();
        client.sent = 0;
        if (client.close_after_flush && !client.lines_waiting) {
            close_client(fd);
            return;
        }
    } else if (client.sent > (1u << 20)) {
        client.unsent.erase(0, client.sent);  // keep the buffer from growing forever
        client.sent = 0;
    }
    if (client.unsent.size() - client.sent > limits_.max_unsent_bytes) {
        ++counters_.dropped_slow;
        if (log_budget_++ % 100 == 0)
            spdlog::warn("dropped a query client that does not read its replies ({} bytes unread)",
                         client.unsent.size() - client.sent);
        close_client(fd);
        return;
    }
    // Requests left unanswered (see serve) are picked up on the next
    // wake-up: EPOLLOUT fires as soon as the socket can take more.
    const bool want_write = !client.unsent.empty() || client.lines_waiting;
    if (want_write != client.writing) {
        client.writing = want_write;
        // While replies are pending, stop reading: a client that only writes
        // cannot make us queue unbounded replies. No EPOLLRDHUP then: it stays
        // set once the peer shuts down its side and would wake us in a busy
        // loop until the replies drain (a hang-up still reports EPOLLHUP).
        loop_.modify(fd, want_write ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP));
    }
}

void QueryServer::publish(const std::function<std::optional<nlohmann::json>(const proto::Request&)>& build) {
    // flush() may close a client: collect first, then look each one up.
    std::vector<int> streams;
    for (const auto& [fd, client] : clients_)
        if (client->subscription && !client->close_after_flush) streams.push_back(fd);
    std::size_t lagged = 0;
    for (const int fd : streams) {
        auto it = clients_.find(fd);
        if (it == clients_.end()) continue;
        Client& client = *it->second;
        auto result = build(*client.subscription);
        if (!result) continue;
        client.unsent += proto::encode_result(client.subscription->id, *result);
        const std::size_t behind = client.unsent.size() - client.sent;
        if (behind > limits_.max_follower_lag_bytes) {
            // Drop what it has not read and tell it why; it can resume with after_seq.
            ++counters_.followers_lagged;
            ++lagged;
            // Cut at a line boundary: a partly sent line is finished first.
            std::size_t cut = client.sent;
            if (cut > 0 && client.unsent[cut - 1] != '\n') {
                const auto newline = client.unsent.find('\n', cut);
                cut = newline == std::string::npos ? client.unsent.size() : newline + 1;
            }
            client.unsent.resize(cut);
            client.unsent += proto::encode_error(
                client.subscription->id,
                {proto::ErrorCode::lagged, "printk follower fell " + std::to_string(behind) +
                                               " bytes behind; dropped (reconnect with after_seq)"});
            client.close_after_flush = true;
        }
        flush(client);
    }
    if (lagged > 0 && log_budget_++ % 100 == 0) spdlog::warn("dropped {} printk follower(s) that fell behind", lagged);
}

std::size_t QueryServer::subscribers() const {
    std::size_t n = 0;
    for (const auto& [fd, client] : clients_) n += client->subscription && !client->close_after_flush ? 1 : 0;
    return n;
}

void QueryServer::close_client(int fd) {
    loop_.unwatch(fd);
    clients_.erase(fd);  // UniqueFd closes it
}

}  // namespace kleak::service

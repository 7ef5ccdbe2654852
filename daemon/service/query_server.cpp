#include "service/query_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "kernel/startup_error.h"
#include "service/file_io.h"

namespace kleak::service {

namespace {

std::optional<sockaddr_un> unix_address(const std::string& text) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (text.size() >= sizeof addr.sun_path) return std::nullopt;
    std::memcpy(addr.sun_path, text.c_str(), text.size() + 1);
    return addr;
}

// True if something accepts connections at `addr`.
bool someone_listens(const sockaddr_un& addr) {
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

std::optional<std::string> set_socket_access(const std::filesystem::path& path, unsigned mode,
                                             std::optional<gid_t> gid) {
    // AT_SYMLINK_NOFOLLOW: a link swapped in for the socket is refused, not
    // chmod-ed through (chmod(2) would change its target).
    if (::fchmodat(AT_FDCWD, path.c_str(), mode, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == EOPNOTSUPP ? symlink_refusal("chmod", path) : failure("cannot chmod", path, errno);
    if (gid && ::fchownat(AT_FDCWD, path.c_str(), static_cast<uid_t>(-1), *gid, AT_SYMLINK_NOFOLLOW) != 0)
        return failure("cannot chown", path, errno);
    return std::nullopt;
}

UniqueFd listen_unix(const std::filesystem::path& path, unsigned mode, std::optional<gid_t> gid) {
    const std::filesystem::path directory = path.parent_path();
    const std::string name = path.filename().string();
    if (!unix_address(path.string()))
        throw StartupError("socket path " + path.string() + " is too long (at most " +
                           std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
    // The directory, opened without following a link in its place; the
    // socket is then looked at, removed and bound under it, through
    // /proc/self/fd/N/<name>, so a link swapped in for the directory after
    // this check cannot move the socket elsewhere.
    UniqueFd dir;
    // 0755 when created: the socket's group must reach it (its mode guards it).
    if (auto error = open_directory(directory, dir, 0755)) throw StartupError("the socket directory: " + *error);
    const std::string via_fd = "/proc/self/fd/" + std::to_string(dir.get()) + "/" + name;
    std::optional<sockaddr_un> addr;
    if (::access("/proc/self/fd", X_OK) == 0) addr = unix_address(via_fd);
    if (!addr) addr = unix_address(path.string());  // no /proc, or a name too long for the detour

    struct stat st {};
    if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode)) throw StartupError(symlink_refusal("bind the query socket at", path));
        if (!S_ISSOCK(st.st_mode))
            throw StartupError(path.string() + " exists and is not a socket; remove it or set socket.path");
        if (someone_listens(*addr)) throw StartupError("another kleakd already serves " + path.string());
        ::unlinkat(dir.get(), name.c_str(), 0);  // stale: its daemon died without cleaning up
    }

    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw StartupError(describe_errno("creating the query socket failed", -errno));
    // Bind with a umask that leaves no window where the socket is more open
    // than `mode`.
    const mode_t old_umask = ::umask(0777 & ~mode);
    const int rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
    const int bind_errno = errno;
    ::umask(old_umask);
    if (rc != 0)
        throw StartupError(describe_errno("binding the query socket " + path.string() + " failed", -bind_errno));
    if (auto error = set_socket_access(path, mode, gid)) throw StartupError(*error);
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
    arm_idle_timer();
}

QueryServer::~QueryServer() {
    while (!clients_.empty()) close_client(clients_.begin()->first);
    if (idle_timer_) loop_.unwatch(idle_timer_->fd());
    loop_.unwatch(listener_.get());
}

void QueryServer::set_limits(ServerLimits limits) {
    limits_ = limits;
    arm_idle_timer();
}

// One timer sweeps every client a few times per timeout rather than one
// timer per client: at most max_clients to look at, and a client is closed
// between idle_timeout and 1.25 x idle_timeout (at most 5 s more) after its
// last progress.
void QueryServer::arm_idle_timer() {
    if (idle_timer_) {
        loop_.unwatch(idle_timer_->fd());
        idle_timer_.reset();
    }
    if (limits_.idle_timeout <= std::chrono::milliseconds::zero()) return;
    const auto period = std::clamp<std::chrono::milliseconds>(limits_.idle_timeout / 4, std::chrono::milliseconds(10),
                                                              std::chrono::milliseconds(5000));
    idle_timer_.emplace(period);
    loop_.watch(idle_timer_->fd(), [this]() {
        idle_timer_->take();
        close_idle_clients();
    });
}

void QueryServer::close_idle_clients() {
    const auto now = std::chrono::steady_clock::now();
    std::vector<int> idle;
    for (const auto& [fd, client] : clients_) {
        const bool reply_unread = client->unsent.size() > client->sent || client->lines_waiting;
        if (client->subscription && !reply_unread) continue;  // a quiet stream waits for lines, it is not idle
        if (now - client->last_progress < limits_.idle_timeout) continue;
        if (counters_.closed_idle++ % 100 == 0)
            spdlog::info("closed query client {}: {} for {} ms (socket.idle_timeout)", client->peer,
                         reply_unread ? "it read none of its reply" : "no request", limits_.idle_timeout.count());
        idle.push_back(fd);
    }
    for (const int fd : idle) close_client(fd);
}

void QueryServer::accept_clients() {
    for (int i = 0; i < 16; ++i) {  // bounded: other fds get their turn
        UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!fd) return;  // EAGAIN, or an aborted connection
        const PeerVerdict verdict = check_peer(fd.get(), policy_);
        std::string refusal;
        // The last slot is an administrator's: whoever holds the others,
        // root can still connect to see what is going on.
        const std::size_t slots = verdict.role == PeerRole::admin
                                      ? limits_.max_clients
                                      : limits_.max_clients - std::min<std::size_t>(limits_.max_clients, 1);
        if (!verdict.allowed()) {
            refusal = verdict.reason;
        } else if (clients_.size() >= slots) {
            refusal = "too many clients (" + std::to_string(clients_.size()) +
                      " connected; socket.max_clients = " + std::to_string(limits_.max_clients) +
                      ", the last kept for root and socket.admin_group); try again later";
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
        client->role = verdict.role;
        client->uid = verdict.uid;
        client->peer = verdict.peer;
        client->last_progress = std::chrono::steady_clock::now();
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
        client.last_progress = std::chrono::steady_clock::now();
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
    const proto::Op op = decoded.request->op;
    if (proto::op_changes_state(op)) {
        if (client.role != PeerRole::admin) {
            ++counters_.errors;
            ++counters_.forbidden;
            // Rate-limited by its own count: the first is always logged.
            if (counters_.forbidden % 100 == 1)
                spdlog::warn("refused op {} from {}: not root or socket.admin_group", proto::op_name(op), client.peer);
            client.unsent += proto::encode_error(
                decoded.request->id,
                {proto::ErrorCode::forbidden, admin_only_message(op, policy_, "uid " + std::to_string(client.uid))});
            return;
        }
        spdlog::info("{} sent op {}", client.peer, proto::op_name(op));  // who reset the history, for the journal
    }
    // A query that fails (a bad_alloc building a large report, a bug) is
    // that client's error, never the daemon's end.
    std::variant<nlohmann::json, proto::Error, Subscribe> outcome;
    try {
        outcome = handler_.handle(*decoded.request);
    } catch (const std::bad_alloc&) {
        outcome = proto::Error{proto::ErrorCode::internal,
                               "out of memory while answering " + std::string(proto::op_name(decoded.request->op))};
    } catch (const std::exception& e) {
        outcome = proto::Error{proto::ErrorCode::internal,
                               std::string(proto::op_name(decoded.request->op)) + " failed: " + e.what()};
    }
    if (auto* error = std::get_if<proto::Error>(&outcome)) {
        ++counters_.errors;
        client.unsent += proto::encode_error(decoded.request->id, *error);
        return;
    }
    auto* subscribe = std::get_if<Subscribe>(&outcome);
    std::string reply =
        proto::encode_result(decoded.request->id, subscribe ? subscribe->first : std::get<nlohmann::json>(outcome));
    if (reply.size() > limits_.max_unsent_bytes) {
        // Held whole until read, it would be more than a client may pin: say
        // so instead of sending part of it and closing.
        ++counters_.errors;
        client.unsent += proto::encode_error(
            decoded.request->id,
            {proto::ErrorCode::too_large, "the " + std::string(proto::op_name(op)) + " reply is " +
                                              std::to_string(reply.size()) + " bytes, more than socket.max_unread (" +
                                              std::to_string(limits_.max_unsent_bytes) +
                                              ") lets kleakd hold for one client; raise socket.max_unread"});
        return;
    }
    queue(client, std::move(reply));
    if (subscribe) client.subscription = *decoded.request;
}

void QueryServer::queue(Client& client, std::string&& line) {
    if (client.unsent.empty())
        client.unsent = std::move(line);  // a large reply is not copied
    else
        client.unsent += line;
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
        client.last_progress = std::chrono::steady_clock::now();
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
            spdlog::warn(
                "dropped query client {}: it does not read its replies ({} bytes unread, socket.max_unread {})",
                client.peer, client.unsent.size() - client.sent, limits_.max_unsent_bytes);
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

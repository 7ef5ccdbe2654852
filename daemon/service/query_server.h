// The daemon's query socket: non-blocking clients on the main epoll loop.
// Requests are answered in order per connection; replies are queued and
// written as the client reads them. Nothing a client does (or fails to do)
// can block ingest or hold resources for long: a client whose unread replies
// pass a bound is dropped, one that neither sends a request nor reads its
// reply for idle_timeout is closed, and the last connection slot is kept for
// an administrator, so root can always get in to look or reset.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>

#include "kernel/event_loop.h"
#include "kernel/unique_fd.h"
#include "proto/protocol.h"
#include "service/peer_access.h"

namespace kleak::service {

// A reply that turns the connection into a stream: `first` is sent now, and
// later results come from QueryServer::publish(), all with the request's id.
struct Subscribe {
    nlohmann::json first;
};

class QueryHandler {
public:
    virtual ~QueryHandler() = default;
    // A result object, a protocol error to send back, or a subscription.
    virtual std::variant<nlohmann::json, proto::Error, Subscribe> handle(const proto::Request& request) = 0;
};

// config socket.max_clients, socket.max_unread and socket.idle_timeout.
struct ServerLimits {
    // Connections open at once; the last one only for an administrator.
    std::size_t max_clients = 64;
    // Per client: reply bytes it has not read. A reply larger than this alone
    // is answered with `too_large` instead; a client whose unread replies
    // pass it is closed.
    std::size_t max_unsent_bytes = 64u << 20;
    std::size_t max_follower_lag_bytes = 4u << 20;  // a stream's unread bytes before it is dropped
    // A client that neither completes a request nor reads any of its reply
    // for this long is closed; a stream with nothing unread is never idle.
    // Zero: never.
    std::chrono::milliseconds idle_timeout{60000};
};

struct ServerCounters {
    std::uint64_t accepted = 0;
    std::uint64_t refused = 0;  // credentials or too many clients
    std::uint64_t requests = 0;
    std::uint64_t errors = 0;     // error replies sent
    std::uint64_t forbidden = 0;  // state-changing ops refused to a reader
    std::uint64_t dropped_slow = 0;
    std::uint64_t closed_idle = 0;
    std::uint64_t followers_lagged = 0;
};

// Creates, binds and listens on a Unix stream socket at `path` with `mode`
// and, if set, group `gid`, creating its directory (0750) when missing. A
// stale socket file left by a dead daemon is replaced; a live one (something
// answers) is an error, and so is a symbolic link in place of the socket or
// of its directory (service/file_io.h). Throws StartupError.
UniqueFd listen_unix(const std::filesystem::path& path, unsigned mode, std::optional<gid_t> gid);

// chmod and chgrp of the socket file at `path`, refusing a symbolic link
// there. nullopt, or what failed.
std::optional<std::string> set_socket_access(const std::filesystem::path& path, unsigned mode,
                                             std::optional<gid_t> gid);

class QueryServer {
public:
    // serve() answers at most this many requests per wake-up, and pauses
    // while this many reply bytes are unread.
    static constexpr int kRequestsPerWakeup = 32;
    static constexpr std::size_t kPauseUnsentBytes = 256u << 10;

    QueryServer(EventLoop& loop, UniqueFd listener, AccessPolicy policy, QueryHandler& handler,
                ServerLimits limits = {});
    ~QueryServer();
    QueryServer(const QueryServer&) = delete;
    QueryServer& operator=(const QueryServer&) = delete;

    // For connections accepted from now on; open ones keep their role.
    void set_policy(AccessPolicy policy) { policy_ = std::move(policy); }
    void set_limits(ServerLimits limits);

    // For every subscribed connection, `build(its request)` gives the next
    // result to stream, or nullopt for nothing new. A subscriber whose unread
    // stream passes max_follower_lag_bytes gets a `lagged` error and is closed.
    void publish(const std::function<std::optional<nlohmann::json>(const proto::Request&)>& build);
    std::size_t subscribers() const;  // live streams (not those being closed)
    std::size_t clients() const { return clients_.size(); }
    const ServerCounters& counters() const { return counters_; }

private:
    struct Client {
        UniqueFd fd;
        proto::LineReader reader{proto::kMaxRequestBytes};
        std::string unsent;
        std::size_t sent = 0;  // bytes of `unsent` already written
        bool close_after_flush = false;
        bool writing = false;                        // EPOLLOUT armed
        std::optional<proto::Request> subscription;  // a streaming connection takes no more requests
        bool lines_waiting = false;                  // serve() paused with requests still buffered
        PeerRole role = PeerRole::reader;
        uid_t uid = 0;
        std::string peer;  // "uid 1000 (pid 4242)", for logs
        // The last time it completed a request or read reply bytes (idle_timeout).
        std::chrono::steady_clock::time_point last_progress;
    };

    void accept_clients();
    void on_client(int fd, std::uint32_t events);
    void receive(Client& client);  // socket -> line reader
    void serve(Client& client);    // line reader -> replies, paced
    void answer(Client& client, const std::string& line);
    void flush(Client& client);
    void close_client(int fd);
    void queue(Client& client, std::string&& line);
    void close_idle_clients();
    void arm_idle_timer();

    EventLoop& loop_;
    UniqueFd listener_;
    AccessPolicy policy_;
    QueryHandler& handler_;
    ServerLimits limits_;
    ServerCounters counters_;
    std::unordered_map<int, std::unique_ptr<Client>> clients_;
    std::optional<TimerFd> idle_timer_;  // sweeps for idle clients; none when idle_timeout is 0
    std::uint64_t log_budget_ = 0;       // for rate-limited warnings
};

}  // namespace kleak::service

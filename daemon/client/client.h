// The client side of the query socket, shared by kleakctl and kleakd-exporter:
// connect, send one request, read its reply. Every failure becomes a
// ClientError whose text says what happened and what to do about it.
#pragma once

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "proto/protocol.h"

namespace kleak::ctl {

inline constexpr const char* kDefaultSocket = "/run/kleakd/kleakd.sock";

class ClientError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// --socket, else $KLEAKD_SOCKET, else the default.
std::filesystem::path socket_path(const std::string& from_option);

class Client {
public:
    explicit Client(const std::filesystem::path& socket);  // throws ClientError
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // How long call() and next() wait for kleakd before giving up with a
    // ClientError; 0 waits forever (a quiet stream, printk --follow).
    void set_timeout(std::chrono::milliseconds timeout);

    // Sends `request` and waits for its reply (any id mismatch is an error).
    proto::Response call(const proto::Request& request);
    // The next reply of a stream (printk --follow) for request `id`.
    proto::Response next(std::uint64_t id);

private:
    std::filesystem::path socket_;
    int fd_ = -1;
    std::chrono::milliseconds timeout_{0};
    proto::LineReader reader_;
};

}  // namespace kleak::ctl

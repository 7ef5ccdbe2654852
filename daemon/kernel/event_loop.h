// One epoll loop for the whole process: rings, timers, signals and sockets are
// all fds. Signals are blocked and read from a signalfd, so there are no
// handlers and no flags shared with them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <unordered_map>

#include "kernel/unique_fd.h"
#include "kernel/wake_fd.h"

namespace kleak {

class EventLoop {
public:
    enum class Trigger { level, edge };
    using Handler = std::function<void(std::uint32_t events)>;

    EventLoop();  // throws StartupError
    // Calls on_readable() when fd is readable (level), or each time it
    // becomes readable (edge), until stop().
    void watch(int fd, std::function<void()> on_readable, Trigger trigger = Trigger::level);
    // Full control: `events` is an EPOLL* mask; the handler gets what fired.
    void watch_events(int fd, std::uint32_t events, Handler handler);
    void modify(int fd, std::uint32_t events);
    void unwatch(int fd);  // before closing fd

    void run();
    void stop() { running_ = false; }

private:
    UniqueFd epoll_;
    std::unordered_map<int, Handler> handlers_;
    bool running_ = false;
};

// Blocks `signals` for the calling thread (call before starting threads)
// and delivers them through a signalfd.
class SignalFd {
public:
    explicit SignalFd(std::initializer_list<int> signals);
    int fd() const { return fd_.get(); }
    int take();  // the pending signal number, 0 if none

private:
    UniqueFd fd_;
};

class TimerFd {
public:
    enum class Repeat { yes, once };
    explicit TimerFd(std::chrono::nanoseconds period, Repeat repeat = Repeat::yes);
    int fd() const { return fd_.get(); }
    std::uint64_t take();  // expirations since the last take
    void rearm(std::chrono::nanoseconds period, Repeat repeat = Repeat::yes);

private:
    UniqueFd fd_;
};

}  // namespace kleak

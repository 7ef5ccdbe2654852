#include "kernel/event_loop.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

#include "kernel/startup_error.h"

namespace kleak {

EventLoop::EventLoop() : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!epoll_) throw StartupError(describe_errno("epoll_create1 failed", -errno));
}

void EventLoop::watch(int fd, std::function<void()> on_readable, Trigger trigger) {
    watch_events(fd, EPOLLIN | (trigger == Trigger::edge ? EPOLLET : 0u),
                 [on_readable = std::move(on_readable)](std::uint32_t) { on_readable(); });
}

void EventLoop::watch_events(int fd, std::uint32_t events, Handler handler) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
        throw StartupError(describe_errno("epoll_ctl(ADD) failed", -errno));
    handlers_[fd] = std::move(handler);
}

void EventLoop::modify(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
}

void EventLoop::unwatch(int fd) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
    handlers_.erase(fd);
}

void EventLoop::run() {
    running_ = true;
    epoll_event events[64];
    while (running_) {
        const int n = ::epoll_wait(epoll_.get(), events, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw StartupError(describe_errno("epoll_wait failed", -errno));
        }
        for (int i = 0; i < n && running_; ++i) {
            // Look up at dispatch time: an earlier handler in this batch may
            // have unwatched this fd.
            auto it = handlers_.find(events[i].data.fd);
            if (it == handlers_.end()) continue;
            Handler handler = it->second;  // a copy: the handler may unwatch itself
            handler(events[i].events);
        }
    }
}

SignalFd::SignalFd(std::initializer_list<int> signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals) sigaddset(&set, s);
    if (::pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) throw StartupError("blocking signals failed");
    fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd_) throw StartupError(describe_errno("signalfd failed", -errno));
}

int SignalFd::take() {
    signalfd_siginfo info{};
    if (::read(fd_.get(), &info, sizeof info) != static_cast<ssize_t>(sizeof info)) return 0;
    return static_cast<int>(info.ssi_signo);
}

TimerFd::TimerFd(std::chrono::nanoseconds period, Repeat repeat)
    : fd_(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)) {
    if (!fd_) throw StartupError(describe_errno("timerfd_create failed", -errno));
    rearm(period, repeat);
}

void TimerFd::rearm(std::chrono::nanoseconds period, Repeat repeat) {
    const auto ns = std::max<std::int64_t>(period.count(), 1);
    itimerspec spec{};
    spec.it_value.tv_sec = ns / 1'000'000'000;
    spec.it_value.tv_nsec = ns % 1'000'000'000;
    if (repeat == Repeat::yes) spec.it_interval = spec.it_value;
    if (::timerfd_settime(fd_.get(), 0, &spec, nullptr) != 0)
        throw StartupError(describe_errno("timerfd_settime failed", -errno));
}

std::uint64_t TimerFd::take() {
    std::uint64_t expirations = 0;
    if (::read(fd_.get(), &expirations, sizeof expirations) != static_cast<ssize_t>(sizeof expirations)) return 0;
    return expirations;
}

}  // namespace kleak

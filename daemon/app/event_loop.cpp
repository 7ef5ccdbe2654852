#include "app/event_loop.h"

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
    epoll_event ev{};
    ev.events = EPOLLIN | (trigger == Trigger::edge ? EPOLLET : 0u);
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
        throw StartupError(describe_errno("epoll_ctl failed", -errno));
    handlers_[fd] = std::move(on_readable);
}

void EventLoop::run() {
    running_ = true;
    epoll_event events[16];
    while (running_) {
        const int n = ::epoll_wait(epoll_.get(), events, 16, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw StartupError(describe_errno("epoll_wait failed", -errno));
        }
        for (int i = 0; i < n && running_; ++i) {
            auto it = handlers_.find(events[i].data.fd);
            if (it != handlers_.end()) it->second();
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

TimerFd::TimerFd(std::chrono::nanoseconds period) : fd_(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)) {
    if (!fd_) throw StartupError(describe_errno("timerfd_create failed", -errno));
    const auto ns = period.count();
    itimerspec spec{};
    spec.it_interval.tv_sec = ns / 1'000'000'000;
    spec.it_interval.tv_nsec = ns % 1'000'000'000;
    spec.it_value = spec.it_interval;
    if (::timerfd_settime(fd_.get(), 0, &spec, nullptr) != 0)
        throw StartupError(describe_errno("timerfd_settime failed", -errno));
}

std::uint64_t TimerFd::take() {
    std::uint64_t expirations = 0;
    if (::read(fd_.get(), &expirations, sizeof expirations) != static_cast<ssize_t>(sizeof expirations)) return 0;
    return expirations;
}

}  // namespace kleak

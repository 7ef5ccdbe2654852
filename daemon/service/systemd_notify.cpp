#include "service/systemd_notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdint>
#include <cstdlib>

namespace kleak::service {

SystemdNotifier::SystemdNotifier() : active_(std::getenv("NOTIFY_SOCKET") != nullptr) {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) watchdog_interval_ = std::chrono::microseconds(usec / 2);
}

void SystemdNotifier::ready(const std::string& status) {
    if (active_) sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
}

void SystemdNotifier::status(const std::string& status) {
    if (active_) sd_notifyf(0, "STATUS=%s", status.c_str());
}

void SystemdNotifier::reloading() {
    if (!active_) return;
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const unsigned long long usec =
        static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL + static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading configuration", usec);
}

void SystemdNotifier::stopping() {
    if (active_) sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

void SystemdNotifier::watchdog() {
    if (active_) sd_notify(0, "WATCHDOG=1");
}

}  // namespace kleak::service

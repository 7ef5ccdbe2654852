// Telling systemd how the daemon is doing (sd_notify). Every call is a no-op
// when NOTIFY_SOCKET is unset, i.e. when not run as a Type=notify service.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace kleak::service {

class SystemdNotifier {
public:
    SystemdNotifier();

    bool active() const { return active_; }
    void ready(const std::string& status);
    void status(const std::string& status);
    void reloading();  // RELOADING=1 + MONOTONIC_USEC, as systemd 253+ expects
    void reloaded(const std::string& status) { ready(status); }
    void stopping();
    void watchdog();

    // Half the unit's WatchdogSec, when the watchdog is on for this process.
    std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_interval_; }

private:
    bool active_ = false;
    std::optional<std::chrono::microseconds> watchdog_interval_;
};

}  // namespace kleak::service

#include "app/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kleak {

namespace {

// "%*" in a pattern: the syslog priority of the message's level, as "<N>".
class SyslogPriorityFlag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        static constexpr const char* priorities[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
        const auto index = static_cast<std::size_t>(msg.level);
        const char* p = index < std::size(priorities) ? priorities[index] : "<6>";
        dest.append(p, p + 3);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriorityFlag>(); }
};

}  // namespace

bool stderr_is_journal() {
    // JOURNAL_STREAM is "device:inode" of the stream systemd connected; it
    // must match stderr, or a child of the service inherited a stale value.
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
    struct stat st {};
    return ::fstat(2, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

void setup_logging(const char* program) {
    auto logger = spdlog::stderr_color_mt(program);
    spdlog::set_default_logger(logger);
    if (stderr_is_journal()) {
        auto formatter = std::make_unique<spdlog::pattern_formatter>();
        formatter->add_flag<SyslogPriorityFlag>('*').set_pattern("%*%v");
        spdlog::set_formatter(std::move(formatter));
    } else {
        spdlog::set_pattern(std::string(program) + ": %^%l%$: %v");
    }
}

}  // namespace kleak

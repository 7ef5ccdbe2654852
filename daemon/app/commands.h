// The subcommands of kleakd. Each returns the process exit code; start-up
// failures are thrown as StartupError and reported by main.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "app/priority.h"
#include "app/tracing_session.h"
#include "kernel/bpf_tracer.h"

namespace kleak {

struct TraceCommand {
    TracerOptions tracer;
    SessionTiming timing;
    std::chrono::seconds interval{5};
    std::size_t top = 10;
    bool json = false;
    std::filesystem::path kallsyms = "/proc/kallsyms";
    int nice = kTracingNice;
};

struct RecordCommand {
    TracerOptions tracer;
    SessionTiming timing;
    std::filesystem::path output;
    std::chrono::seconds duration{0};  // 0: until SIGINT/SIGTERM
    std::filesystem::path kallsyms = "/proc/kallsyms";
    int nice = kTracingNice;
};

// How far back in time a record may sit in a recorded CPU file behind a
// newer one: records in flight at a drain, as live. (Within a drain a ring
// can step back further, but `kleakd record` writes each drain's records of a
// CPU in time order: core/frame_order.h.)
inline constexpr std::chrono::milliseconds kReplayHoldback{10};

struct ReportCommand {
    std::filesystem::path dir;
    std::size_t top = 0;  // 0: every row
    bool json = false;
    std::chrono::milliseconds holdback = kReplayHoldback;
};

struct PrintkCommand {
    std::filesystem::path dir;
    bool json = false;
    std::chrono::milliseconds holdback = kReplayHoldback;
};

int run_trace(const TraceCommand& command);
int run_record(const RecordCommand& command);
int run_report(const ReportCommand& command);
// The kernel log of a recording, merged across CPUs in time order.
int run_printk(const PrintkCommand& command);

}  // namespace kleak

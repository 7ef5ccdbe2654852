#include <signal.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "app/commands.h"
#include "app/recording_io.h"
#include "core/report.h"
#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kernel/kallsyms_file.h"
#include "kleak_abi.h"
#include "version.h"

namespace kleak {

int run_record(const RecordCommand& command) {
    SignalFd signals{SIGINT, SIGTERM};
    RecordingWriter writer(command.output, possible_cpus());
    TracingSession session(command.tracer, writer);
    raise_priority_to(command.nice);  // after start-up: its errors come first

    core::RecordingMeta meta;
    meta.abi_version = KLEAK_ABI_VERSION;
    meta.kleakd_version = kKleakdVersion;
    meta.kernel_release = kernel_release();
    meta.boot_id = boot_id();
    meta.hostname = host_name();
    meta.cpus = session.cpu_count();
    meta.buffer_size = command.tracer.buffer_size;
    meta.start_ns = monotonic_now_ns();

    spdlog::info(
        "recording to {} with a {} ring per CPU on {} CPUs{}", command.output.string(),
        core::format_size(command.tracer.buffer_size), session.cpu_count(),
        command.duration.count() > 0 ? " for " + std::to_string(command.duration.count()) + "s" : "; Ctrl-C stops");

    EventLoop loop;
    session.start(loop, command.timing, [&](std::uint64_t) { writer.flush(); });
    run_until_stopped(loop, signals, command.duration, std::chrono::milliseconds(0), [] {});
    session.stop_and_drain();

    meta.end_ns = monotonic_now_ns();
    meta.dropped_per_cpu = session.drops();
    meta.peak_backlog_bytes = session.consumer().peak_backlog_bytes();
    auto symbolizer = make_kallsyms_symbolizer(command.kallsyms);
    const bool complete = writer.finish(meta, *symbolizer);

    const core::Losses losses =
        core::make_losses(meta.dropped_per_cpu, 0, 0, meta.buffer_size, meta.peak_backlog_bytes);
    spdlog::info("recorded {} records ({} bytes) in {:.1f}s to {}", writer.records(), writer.bytes_written(),
                 static_cast<double>(meta.end_ns - meta.start_ns) / 1e9, command.output.string());
    if (losses.dropped() > 0) {
        spdlog::warn("{} records were dropped because a ring overflowed; try --buffer-size {}", losses.dropped(),
                     core::format_size(losses.suggested_buffer_size));
    }
    if (!complete) {
        spdlog::error("{} records could not be written to {}", writer.records_lost_to_io(), command.output.string());
        return 1;
    }
    return 0;
}

}  // namespace kleak

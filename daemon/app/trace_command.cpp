#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "app/commands.h"
#include "app/pipeline_sink.h"
#include "core/report.h"
#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kernel/kallsyms_file.h"

namespace kleak {

namespace {

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

// The periodic live view: one summary line and the top-N sites.
void print_interval(std::FILE* out, const core::Pipeline& pipeline, std::uint64_t elapsed_ns,
                    std::uint64_t records_delta, double seconds, std::uint64_t dropped, std::size_t top,
                    core::Symbolizer& symbolizer) {
    const core::Totals& t = pipeline.tracker().totals();
    std::fprintf(out, "\n[%.1fs] %.0f records/s, %llu outstanding allocations (%llu bytes), %llu dropped, %llu late\n",
                 static_cast<double>(elapsed_ns) / 1e9, static_cast<double>(records_delta) / seconds,
                 static_cast<unsigned long long>(t.outstanding), static_cast<unsigned long long>(t.outstanding_bytes),
                 static_cast<unsigned long long>(dropped), static_cast<unsigned long long>(pipeline.late()));
    const auto rows = core::top_sites_by_outstanding(pipeline.tracker(), top, symbolizer);
    std::fputs(core::top_table_text(rows).c_str(), out);
    std::fflush(out);
}

}  // namespace

int run_trace(const TraceCommand& command) {
    SignalFd signals{SIGINT, SIGTERM};
    core::Pipeline pipeline(possible_cpus());
    PipelineSink sink(pipeline);
    auto symbolizer = make_kallsyms_symbolizer(command.kallsyms);
    TracingSession session(command.tracer, sink);
    spdlog::info("tracing {} with a {} ring per CPU on {} CPUs; Ctrl-C prints the report",
                 join(session.tracer().attached()), core::format_size(command.tracer.buffer_size), session.cpu_count());

    // In --json mode stdout carries only the final report.
    std::FILE* live_out = command.json ? stderr : stdout;
    const std::uint64_t started = monotonic_now_ns();
    std::uint64_t last_tick = started;
    std::uint64_t last_records = 0;
    EventLoop loop;
    session.start(loop, command.timing, [&](std::uint64_t watermark) { pipeline.release_until(watermark); });
    run_until_stopped(loop, signals, std::chrono::seconds(0), command.interval, [&]() {
        const std::uint64_t now = monotonic_now_ns();
        const std::uint64_t records = pipeline.records();
        const double seconds = static_cast<double>(now - last_tick) / 1e9;
        std::uint64_t dropped = 0;
        for (const auto d : session.drops()) dropped += d;
        print_interval(live_out, pipeline, now - started, records - last_records, seconds, dropped, command.top,
                       *symbolizer);
        last_tick = now;
        last_records = records;
    });

    session.stop_and_drain();
    pipeline.finish();
    const core::Losses losses = core::make_losses(session.drops(), pipeline.late(), pipeline.undecodable(),
                                                  command.tracer.buffer_size, session.consumer().peak_backlog_bytes());
    const core::Report report = core::build_report(pipeline.tracker(), losses, *symbolizer);
    if (command.json) {
        std::cout << core::report_to_json(report).dump(2) << '\n';
    } else {
        std::cout << '\n' << core::report_to_text(report, command.top);
    }
    std::cout.flush();
    return 0;
}

}  // namespace kleak

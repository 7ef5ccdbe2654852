#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/pipeline_sink.h"
#include "app/stack_control.h"
#include "core/report.h"
#include "core/sizes.h"
#include "core/stacks_query.h"
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

// What the run produced, printed after the report: its loss line already
// carries each program's recursion misses and, with sysctl
// kernel.bpf_stats_enabled=1, its ns per event (core::Losses::programs).
struct RunSummary {
    std::uint64_t records = 0;
    double seconds = 0;
    std::uint32_t sample_shift = 0;
    bool emit_records = true;
};

std::string summary_text(const RunSummary& run) {
    char line[256];
    std::string out;
    std::snprintf(line, sizeof line, "records: %llu in %.1f s (%.0f/s)%s\n",
                  static_cast<unsigned long long>(run.records), run.seconds,
                  run.seconds > 0 ? static_cast<double>(run.records) / run.seconds : 0.0,
                  run.emit_records ? "" : "; --no-emit: programs attached, nothing written");
    out += line;
    if (run.sample_shift != 0) {
        const unsigned long long factor = 1ULL << run.sample_shift;
        std::snprintf(line, sizeof line,
                      "sampled: 1 in %llu pointers (--sample-shift %u): counts and bytes above are about 1/%llu of "
                      "the real ones\n",
                      factor, run.sample_shift, factor);
        out += line;
    }
    return out;
}

nlohmann::json summary_json(const RunSummary& run) {
    return {{"records", run.records},
            {"seconds", run.seconds},
            {"sample_shift", run.sample_shift},
            {"emit_records", run.emit_records}};
}

}  // namespace

int run_trace(const TraceCommand& command) {
    SignalFd signals{SIGINT, SIGTERM};
    core::Pipeline pipeline(possible_cpus());
    PipelineSink sink(pipeline);
    auto symbolizer = make_kallsyms_symbolizer(command.kallsyms);
    TracingSession session(command.tracer, sink);
    raise_priority_to(command.nice);  // after start-up: its errors come first
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
    pipeline.settle();
    const RunSummary run{pipeline.records(), static_cast<double>(monotonic_now_ns() - started) / 1e9,
                         command.tracer.sample_shift, command.tracer.emit_records};
    core::Losses losses = core::make_losses(session.drops(), pipeline.late(), pipeline.undecodable(),
                                            command.tracer.buffer_size, session.consumer().peak_backlog_bytes(),
                                            session.program_costs());
    losses.dropped_per_family = session.tracer().read_drops_by_family();
    const core::Report report = core::build_report(pipeline.tracker(), losses, *symbolizer);
    nlohmann::json stacks;
    if (command.tracer.stacks != core::StackMode::off) {
        TracerStackSource source(session.tracer());
        stacks = core::stacks_to_json(pipeline.tracker(), source, *symbolizer, {.function = "", .top = command.top});
        StackControl(session.tracer(), command.tracer.stacks, command.tracer.stack_sample_shift).label(stacks);
    }
    if (command.json) {
        nlohmann::json out = core::report_to_json(report);
        out["run"] = summary_json(run);
        if (!stacks.is_null()) out["stacks"] = std::move(stacks);
        std::cout << out.dump(2) << '\n';
    } else {
        std::cout << '\n' << core::report_to_text(report, command.top) << summary_text(run);
        if (!stacks.is_null())
            std::cout << "\nLive bytes per kernel stack (folded, outermost first):\n"
                      << (core::sampled_note(stacks).empty() ? "" : "(" + core::sampled_note(stacks) + ")\n")
                      << core::folded_stacks(stacks, core::StackWeight::bytes);
    }
    std::cout.flush();
    return 0;
}

}  // namespace kleak

#include <iostream>
#include <thread>

#include "app/commands.h"
#include "app/recording_io.h"
#include "app/tracking_thread.h"
#include "core/printk_json.h"
#include "core/report.h"

namespace kleak {

int run_report(const ReportCommand& command) {
    const core::RecordingMeta meta = read_recording_meta(command.dir);
    core::Pipeline pipeline(meta.cpus);
    if (std::thread::hardware_concurrency() > 1) {
        // Merge on this thread, track on another: the same result, sooner.
        TrackingThread tracking(pipeline);
        replay_recording(command.dir, meta, pipeline, command.holdback);
        tracking.finish();
    } else {
        replay_recording(command.dir, meta, pipeline, command.holdback);
    }
    pipeline.settle();

    core::FixedSymbolizer symbolizer(meta.symbols);
    const core::Losses losses = core::make_losses(meta.dropped_per_cpu, pipeline.late(), pipeline.undecodable(),
                                                  meta.buffer_size, meta.peak_backlog_bytes);
    const core::Report report = core::build_report(pipeline.tracker(), losses, symbolizer);
    if (command.json) {
        nlohmann::json json = core::report_to_json(report);
        json["recording"] = {
            {"kernel_release", meta.kernel_release},
            {"boot_id", meta.boot_id},
            {"hostname", meta.hostname},
            {"cpus", meta.cpus},
            {"records", pipeline.records()},
            {"duration_ns", meta.end_ns - meta.start_ns},
        };
        std::cout << json.dump(2) << '\n';
    } else {
        std::cout << "recording of " << meta.hostname << " (kernel " << meta.kernel_release << "), "
                  << pipeline.records() << " records over " << static_cast<double>(meta.end_ns - meta.start_ns) / 1e9
                  << "s\n\n"
                  << core::report_to_text(report, command.top);
    }
    return 0;
}

int run_printk(const PrintkCommand& command) {
    const core::RecordingMeta meta = read_recording_meta(command.dir);
    core::Pipeline pipeline(meta.cpus);
    std::uint64_t seq = 0;
    pipeline.set_printk_sink([&](core::PrintkLine&& line) {
        line.seq = ++seq;
        if (command.json) {
            std::cout << core::printk_line_to_json(line).dump() << '\n';
        } else {
            std::cout << core::format_printk_line(line) << '\n';
        }
    });
    replay_recording(command.dir, meta, pipeline, command.holdback);
    std::cout.flush();
    return 0;
}

}  // namespace kleak

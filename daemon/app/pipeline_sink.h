// Feeds ring records straight into the core pipeline (decode + stage only).
#pragma once

#include "core/pipeline.h"
#include "kernel/ring_consumer.h"

namespace kleak {

class PipelineSink final : public RecordSink {
public:
    explicit PipelineSink(core::Pipeline& pipeline) : pipeline_(pipeline) {}
    void on_record(unsigned cpu, std::span<const std::byte> record) override { pipeline_.on_record(cpu, record); }

private:
    core::Pipeline& pipeline_;
};

}  // namespace kleak

// Writes a synthetic recording (kleak0..N + meta.json) of N records, for
// timing `kleakd report`. Usage: kleakd-make-recording DIR RECORDS [CPUS]
#include <cstdlib>
#include <iostream>

#include "app/recording_io.h"
#include "kleak_abi.h"
#include "synthetic_stream.h"

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " DIR RECORDS [CPUS]\n";
        return 2;
    }
    const std::size_t count = std::strtoull(argv[2], nullptr, 10);
    const unsigned cpus = argc > 3 ? static_cast<unsigned>(std::atoi(argv[3])) : 2;
    kleak::RecordingWriter writer(argv[1], cpus);
    constexpr std::size_t chunk = 1'000'000;
    kleak::bench::SyntheticStream stream(cpus, 100'000);
    for (std::size_t done = 0; done < count; done += chunk) {
        const auto records = stream.next(std::min(chunk, count - done));
        for (const auto& r : records) writer.on_record(r.cpu, {r.bytes, r.size});
        writer.flush();
    }
    kleak::core::RecordingMeta meta;
    meta.abi_version = KLEAK_ABI_VERSION;
    meta.kleakd_version = "bench";
    meta.cpus = cpus;
    meta.buffer_size = 8 << 20;
    meta.end_ns = 1;
    meta.dropped_per_cpu.assign(cpus, 0);
    kleak::core::FixedSymbolizer symbols({});
    return writer.finish(meta, symbols) ? 0 : 1;
}

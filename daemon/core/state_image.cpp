#include "state_image.h"

#include <cstring>
#include <string_view>

#include "kleak_abi.h"
#include "site_verdicts.h"
#include "state_bytes.h"

namespace kleak::core {

namespace {

constexpr char kMagic[8] = {'K', 'L', 'E', 'A', 'K', 'S', 'T', '\0'};
// Far above any real window (printk.lines) or site count: a count beyond
// these is a damaged image, refused before memory is sized by it.
constexpr std::uint64_t kMaxRings = 1u << 16;

void write_printk(ByteWriter& out, const PrintkLog& log) {
    out.u64(log.last_seq());
    out.u64(log.evicted());
    const std::vector<PrintkLine> lines = log.query({});
    out.u64(lines.size());
    for (const PrintkLine& l : lines) {
        out.u64(l.seq);
        out.u64(l.ts_ns);
        out.u32(l.cpu);
        out.u32(l.tgid);
        out.u32(l.tid);
        out.u32(static_cast<std::uint32_t>(l.level));
        out.u8(l.truncated ? 1 : 0);
        out.str(l.text);
    }
}

bool read_printk(ByteReader& in, PrintkLog* log) {
    const std::uint64_t last_seq = in.u64();
    const std::uint64_t evicted = in.u64();
    const std::uint64_t count = in.u64();
    if (!in.can_hold(count, 37)) return false;
    std::vector<PrintkLine> lines;
    if (log != nullptr) lines.reserve(count);
    std::uint64_t previous = 0;
    for (std::uint64_t i = 0; i < count && in.ok(); ++i) {
        PrintkLine l;
        l.seq = in.u64();
        l.ts_ns = in.u64();
        l.cpu = static_cast<std::uint16_t>(in.u32());
        l.tgid = in.u32();
        l.tid = in.u32();
        l.level = static_cast<int>(in.u32());
        l.truncated = in.u8() != 0;
        l.text = in.str();
        if (l.seq <= previous || l.seq > last_seq) return false;
        previous = l.seq;
        if (log != nullptr) lines.push_back(std::move(l));
    }
    if (!in.ok()) return false;
    if (log != nullptr) log->restore(std::move(lines), last_seq, evicted);
    return true;
}

void write_tiers(ByteWriter& out, std::uint64_t address, const HistoryTiers& tiers) {
    out.u64(address);
    for (const std::vector<HistoryPoint>& tier : tiers) {
        out.u32(static_cast<std::uint32_t>(tier.size()));
        for (const HistoryPoint& p : tier) {
            out.u64(p.t_ns);
            out.u64(p.outstanding);
            out.u64(p.bytes);
        }
    }
}

// Every site with points, by address (the first of two sites sharing one:
// the frees of two families both have address 0), then those restored at
// start-up that no site has taken yet, as history_section_text() does.
void write_histories(ByteWriter& out, const SiteVerdicts* verdicts, std::span<const SiteStats> sites) {
    SavedSites all;
    if (verdicts != nullptr) {
        const SiteHistories& h = verdicts->histories();
        for (SiteId id = 0; id < sites.size(); ++id) {
            if (!h.has_history(id) || all.contains(sites[id].call_site)) continue;
            HistoryTiers tiers;
            for (std::size_t t = 0; t < tiers.size(); ++t) h.series_into(id, t, tiers[t]);
            all.emplace(sites[id].call_site, std::move(tiers));
        }
        for (const auto& [address, tiers] : verdicts->pending()) all.try_emplace(address, tiers);
    }
    out.u64(all.size());
    for (const auto& [address, tiers] : all) write_tiers(out, address, tiers);
}

bool read_histories(ByteReader& in, SavedSites& out) {
    const std::uint64_t count = in.u64();
    if (count > kMaxSavedSites || !in.can_hold(count, 8 + 4 * kHistoryTiers.size())) return false;
    for (std::uint64_t i = 0; i < count && in.ok(); ++i) {
        const std::uint64_t address = in.u64();
        HistoryTiers tiers;
        for (std::size_t t = 0; t < tiers.size(); ++t) {
            const std::uint32_t n = in.u32();
            if (n > kHistoryTiers[t].capacity || !in.can_hold(n, 24)) return false;
            for (std::uint32_t k = 0; k < n; ++k) {
                HistoryPoint p{in.u64(), in.u64(), in.u64()};
                if (!tiers[t].empty() && p.t_ns < tiers[t].back().t_ns) return false;  // adopt() needs them rising
                tiers[t].push_back(p);
            }
        }
        out.emplace(address, std::move(tiers));
    }
    return in.ok();
}

LoadedState refuse(std::string why, Tracker& tracker, PrintkLog* printk) {
    tracker.reset();
    if (printk != nullptr) printk->clear();
    LoadedState out;
    out.error = std::move(why);
    return out;
}

}  // namespace

const char* state_kind_name(StateKind kind) {
    return kind == StateKind::clean_stop ? "clean stop" : "checkpoint";
}

std::uint64_t state_checksum(std::span<const std::byte> bytes) {
    std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ bytes.size();
    std::size_t i = 0;
    for (; i + 8 <= bytes.size(); i += 8) {
        std::uint64_t w;
        std::memcpy(&w, bytes.data() + i, 8);
        h = (h ^ (w * 0xBF58476D1CE4E5B9ULL));
        h = ((h << 27) | (h >> 37)) * 0x94D049BB133111EBULL;
    }
    for (; i < bytes.size(); ++i) h = (h ^ static_cast<std::uint64_t>(bytes[i])) * 0x100000001B3ULL;
    return h ^ (h >> 31);
}

std::vector<std::byte> write_state_image(const StateMeta& meta, const Tracker& tracker, const PrintkLog* printk,
                                         const SiteVerdicts* verdicts) {
    ByteWriter out;
    for (const char c : kMagic) out.u8(static_cast<std::uint8_t>(c));
    out.u32(kStateFormatVersion);
    out.u32(KLEAK_ABI_VERSION);
    out.u64(0);  // payload bytes, patched below
    out.u64(0);  // checksum, patched below
    out.str(meta.origin.build_id);
    out.str(meta.origin.boot_id);
    out.u8(static_cast<std::uint8_t>(meta.kind));
    out.u64(meta.written_ns);
    out.u64(meta.records);
    out.u64(meta.ring_positions.size());
    for (const std::uint64_t p : meta.ring_positions) out.u64(p);
    tracker.save_image(out);
    out.u8(printk != nullptr ? 1 : 0);
    if (printk != nullptr) write_printk(out, *printk);
    write_histories(out, verdicts, tracker.sites());
    const std::size_t payload = out.size() - kStateHeaderBytes;
    out.patch_u64(16, payload);
    out.patch_u64(24, state_checksum(out.bytes().subspan(kStateHeaderBytes)));
    return out.take();
}

LoadedState read_state_image(std::span<const std::byte> image, const StateOrigin& here, Tracker& tracker,
                             PrintkLog* printk) {
    if (image.size() < kStateHeaderBytes)
        return refuse("truncated: " + std::to_string(image.size()) + " bytes, shorter than the header", tracker,
                      printk);
    ByteReader header(image.first(kStateHeaderBytes));
    char magic[8];
    for (char& c : magic) c = static_cast<char>(header.u8());
    if (std::memcmp(magic, kMagic, sizeof magic) != 0) return refuse("not a kleakd state image", tracker, printk);
    const std::uint32_t format = header.u32();
    if (format != kStateFormatVersion)
        return refuse("state format " + std::to_string(format) + ", this kleakd reads " +
                          std::to_string(kStateFormatVersion),
                      tracker, printk);
    const std::uint32_t abi = header.u32();
    const std::uint64_t payload = header.u64();
    const std::uint64_t checksum = header.u64();
    if (payload != image.size() - kStateHeaderBytes)
        return refuse("truncated: the header says " + std::to_string(payload) + " bytes follow, " +
                          std::to_string(image.size() - kStateHeaderBytes) + " do",
                      tracker, printk);
    const std::span<const std::byte> body = image.subspan(kStateHeaderBytes);
    if (state_checksum(body) != checksum) return refuse("bad checksum: the image is damaged", tracker, printk);
    if (abi != KLEAK_ABI_VERSION)
        return refuse("written for record ABI " + std::to_string(abi) + ", this kleakd's is " +
                          std::to_string(KLEAK_ABI_VERSION),
                      tracker, printk);

    ByteReader in(body);
    StateMeta meta;
    meta.origin.build_id = in.str();
    meta.origin.boot_id = in.str();
    if (meta.origin.boot_id != here.boot_id)
        return refuse("written in boot " + meta.origin.boot_id + ", this is boot " + here.boot_id +
                          " (its pointers and call sites are gone)",
                      tracker, printk);
    const std::uint8_t kind = in.u8();
    if (kind != static_cast<std::uint8_t>(StateKind::clean_stop) &&
        kind != static_cast<std::uint8_t>(StateKind::checkpoint))
        return refuse("unknown image kind " + std::to_string(kind), tracker, printk);
    meta.kind = static_cast<StateKind>(kind);
    meta.written_ns = in.u64();
    meta.records = in.u64();
    const std::uint64_t rings = in.u64();
    if (rings > kMaxRings || !in.can_hold(rings, 8)) return refuse("damaged ring positions", tracker, printk);
    for (std::uint64_t i = 0; i < rings; ++i) meta.ring_positions.push_back(in.u64());
    if (!tracker.load_image(in)) return refuse("damaged tracker section", tracker, printk);
    const bool has_printk = in.u8() != 0;
    if (has_printk && !read_printk(in, printk)) return refuse("damaged printk section", tracker, printk);
    LoadedState out;
    if (!read_histories(in, out.histories)) return refuse("damaged history section", tracker, printk);
    if (in.remaining() != 0) return refuse("trailing bytes after the last section", tracker, printk);
    out.meta = std::move(meta);
    return out;
}

}  // namespace kleak::core

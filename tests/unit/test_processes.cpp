// Who allocated, recorded at the allocation: KLEAK_PROCESS records decoded,
// the process table (a process that exits or moves cgroup keeps what it was
// when it allocated), its bound, and cgroup v2 ids named as paths.
#include <gtest/gtest.h>

#include <cstring>

#include "core/cgroup_names.h"
#include "core/event.h"
#include "core/fast_decode.h"
#include "core/process_table.h"
#include "core/record_batch.h"
#include "core/stacks_query.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

using test::alloc_event;
using test::free_event;

constexpr std::uint64_t kPipeSite = 0xffffffff81300010;

Comm comm(const char* text) {
    Comm out{};
    std::strncpy(out.data(), text, out.size());
    return out;
}

Event process_event(std::uint64_t ts, std::uint32_t tgid, std::uint64_t cgroup_id, const char* name) {
    kleak_process_record rec{};
    rec.hdr.ts_ns = ts;
    rec.hdr.kind = KLEAK_PROCESS;
    rec.hdr.tgid = tgid;
    rec.cgroup_id = cgroup_id;
    std::strncpy(rec.comm, name, sizeof rec.comm);
    Event out = test::stale_event();
    EXPECT_EQ(decode_record(test::record_bytes(rec), 1, out), DecodeStatus::ok);
    return out;
}

TEST(ProcessRecord, DecodesTgidCommAndCgroup) {
    const Event e = process_event(42, 1234, 0x5eed, "leaky-worker");
    EXPECT_EQ(e.kind, EventKind::process);
    EXPECT_EQ(e.ts_ns, 42u);
    EXPECT_EQ(e.tgid, 1234u);
    EXPECT_EQ(e.cache, 0x5eedu);
    EXPECT_EQ(process_comm(e), comm("leaky-worker"));
    EXPECT_EQ(e.stack, 0u);

    // The fast path hands it to the full decoder: same result.
    kleak_process_record rec{};
    rec.hdr.kind = KLEAK_PROCESS;
    rec.hdr.tgid = 7;
    rec.cgroup_id = 9;
    std::strncpy(rec.comm, "sixteen-chars-xx", sizeof rec.comm);  // no NUL: all 16 kept
    Event fast = test::stale_event();
    ASSERT_EQ(decode_record_fast(test::record_bytes(rec), 0, fast), DecodeStatus::ok);
    EXPECT_EQ(fast.kind, EventKind::process);
    EXPECT_EQ(std::string(process_comm(fast).data(), 16), "sixteen-chars-xx");

    const auto bytes = test::record_bytes(rec);
    EXPECT_EQ(decode_record(std::span(bytes).first(39), 0, fast), DecodeStatus::too_short);
}

// A batch holds a process record and then its allocation's record: both
// come out, the allocation not swallowed as the process record's tail.
TEST(ProcessRecord, SplitsFromTheAllocationAfterItInABatch) {
    kleak_process_record process{};
    process.hdr.kind = KLEAK_PROCESS;
    process.hdr.tgid = 5;
    const kleak_alloc_record alloc =
        test::alloc_record(alloc_event({.ts = 2, .ptr = 0x10, .site = kPipeSite, .alloc = 64, .tgid = 5, .stack = 1}));
    std::vector<std::byte> batch = test::record_bytes(process);
    const auto more = test::record_bytes(alloc);
    batch.insert(batch.end(), more.begin(), more.end());
    std::vector<std::size_t> sizes;
    EXPECT_EQ(for_each_record(batch, [&](std::span<const std::byte> r) { sizes.push_back(r.size()); }), 2u);
    EXPECT_EQ(sizes, (std::vector<std::size_t>{sizeof process, sizeof alloc}));
}

TEST(ProcessTable, AnAllocationGetsItsProcessAsRecordedBeforeIt) {
    ProcessTable table;
    table.recorded(100, 7, comm("sh"));
    const std::uint32_t id = table.current(100);
    ASSERT_NE(id, 0u);
    EXPECT_TRUE(table[id].recorded);
    EXPECT_EQ(table[id].tgid, 100u);
    EXPECT_EQ(table[id].cgroup_id, 7u);
    EXPECT_EQ(table[id].comm_text(), "sh");
    // The same record again (the BPF map's LRU evicted it): the same process.
    table.recorded(100, 7, comm("sh"));
    EXPECT_EQ(table.current(100), id);
    EXPECT_EQ(table.size(), 1u);
    EXPECT_EQ(table.cgroups(), std::vector<std::uint64_t>{7});
}

// A move (or an exec) makes a new process: what was allocated before keeps
// the cgroup it was allocated in.
TEST(ProcessTable, AMoveOrExecIsANewProcessTheOldAllocationsKeepTheOld) {
    ProcessTable table;
    table.recorded(100, 7, comm("sh"));
    const std::uint32_t before = table.current(100);
    table.recorded(100, 8, comm("sh"));
    const std::uint32_t moved = table.current(100);
    table.recorded(100, 8, comm("leaker"));
    const std::uint32_t execd = table.current(100);
    EXPECT_NE(before, moved);
    EXPECT_NE(moved, execd);
    EXPECT_EQ(table[before].cgroup_id, 7u);
    EXPECT_EQ(table[moved].cgroup_id, 8u);
    EXPECT_EQ(table[execd].comm_text(), "leaker");
    EXPECT_EQ(table.cgroups(), (std::vector<std::uint64_t>{7, 8}));
}

// A tgid the stream never recorded (an ABI 5 recording): a process all the
// same, named from /proc at the query; a later record completes it.
TEST(ProcessTable, AnUnrecordedTgidIsCompletedByItsFirstRecord) {
    ProcessTable table;
    const std::uint32_t id = table.current(55);
    ASSERT_NE(id, 0u);
    EXPECT_FALSE(table[id].recorded);
    table.recorded(55, 3, comm("late"));
    EXPECT_EQ(table.current(55), id);
    EXPECT_TRUE(table[id].recorded);
    EXPECT_EQ(table[id].comm_text(), "late");
}

TEST(ProcessTable, PastTheLimitNewProcessesFoldIntoNone) {
    ProcessTable table;
    for (std::uint32_t tgid = 1; tgid <= ProcessTable::kMaxProcesses; ++tgid) table.recorded(tgid, 1, comm("p"));
    EXPECT_EQ(table.size(), ProcessTable::kMaxProcesses);
    EXPECT_EQ(table.folded(), 0u);
    table.recorded(999999, 1, comm("late"));
    EXPECT_EQ(table.current(999999), 0u);
    EXPECT_EQ(table.size(), ProcessTable::kMaxProcesses);
    EXPECT_EQ(table.folded(), 2u);  // its record and its allocation
    EXPECT_NE(table.current(1), 0u);  // the known ones keep theirs
    EXPECT_LT(table.memory_bytes(), std::size_t{4} << 20);
}

// Through the tracker: the process exits (no more records) and another
// process reuses its tgid in another cgroup; each allocation keeps its own.
TEST(ProcessTable, TrackerRowsNameTheProcessAtTheAllocation) {
    Tracker tracker;
    tracker.apply(process_event(1, 300, 11, "first"));
    tracker.apply(alloc_event({.ts = 2, .ptr = 0x10, .site = kPipeSite, .alloc = 192, .tgid = 300, .stack = 1}));
    tracker.apply(process_event(3, 300, 12, "reused"));  // tgid 300 again, someone else
    tracker.apply(alloc_event({.ts = 4, .ptr = 0x20, .site = kPipeSite, .alloc = 192, .tgid = 300, .stack = 1}));
    tracker.apply(alloc_event({.ts = 5, .ptr = 0x30, .site = kPipeSite, .alloc = 192, .tgid = 300, .stack = 1}));
    tracker.apply(alloc_event({.ts = 6, .ptr = 0x40, .site = kPipeSite, .alloc = 192, .tgid = 300}));  // no stack
    const std::vector<ProcessTotal> rows = live_processes(tracker, std::nullopt);
    ASSERT_EQ(rows.size(), 2u);
    const ProcessIdentity& reused = tracker.processes()[rows[0].process];
    EXPECT_EQ(reused.comm_text(), "reused");
    EXPECT_EQ(reused.cgroup_id, 12u);
    EXPECT_EQ(rows[0].tgid, 300u);
    EXPECT_EQ(rows[0].outstanding, 2u);
    const ProcessIdentity& first = tracker.processes()[rows[1].process];
    EXPECT_EQ(first.comm_text(), "first");
    EXPECT_EQ(first.cgroup_id, 11u);
    EXPECT_EQ(rows[1].outstanding, 1u);
    // Process records are not allocations: the totals count the four.
    EXPECT_EQ(tracker.totals().outstanding, 4u);
    EXPECT_EQ(tracker.totals().allocs, 4u);
    tracker.apply(free_event({.ts = 7, .ptr = 0x10, .site = kPipeSite}));
    EXPECT_EQ(live_processes(tracker, std::nullopt).size(), 1u);
}

constexpr const char* kHybridMountinfo =
    "22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw\n"
    "27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd\n";

TEST(CgroupNames, FindsTheCgroup2MountInMountinfo) {
    EXPECT_EQ(cgroup2_mount_point(kHybridMountinfo), "/sys/fs/cgroup/unified");
    EXPECT_EQ(cgroup2_mount_point("30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"),
              "/sys/fs/cgroup");
    // Optional fields vary in number; escapes are undone.
    EXPECT_EQ(cgroup2_mount_point("30 1 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n"), "/mnt/my cg");
    EXPECT_EQ(cgroup2_mount_point("22 1 0:21 / /sys rw shared:7 - sysfs sysfs rw\n"), "");
    EXPECT_EQ(cgroup2_mount_point(""), "");
}

TEST(CgroupNames, PathsAreRelativeToTheMount) {
    EXPECT_EQ(cgroup_relative_path("/sys/fs/cgroup/system.slice/foo.service", "/sys/fs/cgroup"),
              "/system.slice/foo.service");
    EXPECT_EQ(cgroup_relative_path("/sys/fs/cgroup", "/sys/fs/cgroup"), "/");
    EXPECT_EQ(cgroup_relative_path("/sys/fs/cgroup/", "/sys/fs/cgroup/"), "/");
    EXPECT_EQ(cgroup_relative_path("/sys/fs/cgroupfoo/x", "/sys/fs/cgroup"), "/sys/fs/cgroupfoo/x");
    EXPECT_EQ(cgroup_relative_path("/a/b", "/"), "/a/b");
}

TEST(CgroupNames, ARemovedCgroupIsNamedAsSuchAndAnUnknownOneByItsNumber) {
    CgroupNames names;
    names.looked_up(7, "/kleak-test.scope");
    names.looked_up(8, std::nullopt);
    EXPECT_EQ(names.path(7), "/kleak-test.scope");
    EXPECT_EQ(names.path(8), "(removed) cgroup id 8");
    EXPECT_EQ(names.path(9), "cgroup id 9");
    EXPECT_EQ(names.size(), 2u);
    EXPECT_EQ(names.removed(), 1u);
}

TEST(CgroupNames, BoundedPastTheLimitIdsKeepTheirNumber) {
    CgroupNames names;
    for (std::uint64_t id = 0; id < CgroupNames::kMaxPaths; ++id) names.looked_up(id, "/c" + std::to_string(id));
    names.looked_up(CgroupNames::kMaxPaths, "/one-too-many");
    EXPECT_EQ(names.size(), CgroupNames::kMaxPaths);
    EXPECT_EQ(names.unnamed(), 1u);
    EXPECT_EQ(names.path(CgroupNames::kMaxPaths), "cgroup id " + std::to_string(CgroupNames::kMaxPaths));
    EXPECT_EQ(names.path(5), "/c5");
    names.looked_up(5, "/c5-again");  // a known id is updated, not refused
    EXPECT_EQ(names.path(5), "/c5-again");
}

}  // namespace
}  // namespace kleak::core

// kleakd's CPU priority while it traces. The rings are drained by a process
// that competes for CPU with the workload it traces: when that workload
// saturates every CPU (measured: two pipe-churning threads on a 2-CPU
// machine), a consumer at the default priority is not scheduled often enough
// and the rings overflow, although it needs only ~half a CPU. auditd boosts
// itself for the same reason (auditd.conf priority_boost).
#pragma once

namespace kleak {

// The nice value `kleakd trace` and `kleakd record` run at unless told
// otherwise; the service gets the same from Nice= in kleakd.service.
inline constexpr int kTracingNice = -10;

// Lowers the process's nice value to `nice` if it is higher; never raises it.
// Without the privilege to do so (CAP_SYS_NICE), warns once and goes on.
void raise_priority_to(int nice);

}  // namespace kleak

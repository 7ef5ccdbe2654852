// Start-up failures: one line a user can act on. Only start-up and config
// code throws; the event path returns codes.
#pragma once

#include <stdexcept>
#include <string>

namespace kleak {

class StartupError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// "what failed: strerror (hint)" for a libbpf/syscall negative errno.
std::string describe_errno(const std::string& what, int negative_errno);

}  // namespace kleak

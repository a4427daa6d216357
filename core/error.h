#pragma once
// Errors meant for a person: every message names the file, tensor or setting and the reason.
#include <stdexcept>
#include <string>

namespace pbllm {

/// Thrown by core for bad input or impossible settings. Workers and the CLI catch it once and
/// show what() to the user; it never signals a programming error.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Thrown when a progress callback asked to stop; the operation left its inputs unchanged.
class Cancelled : public Error {
public:
    Cancelled() : Error("cancelled") {}
};

} // namespace pbllm

#pragma once
// The studio's background work (the statistics pass, exact preview passes, whole-Linear details)
// yields to interactive work (slider previews): between units it waits while a preview ran in the
// last 300 ms, and a preview uses only the cores that running background units leave, so it never
// waits on a barrier for a thread the background has descheduled. On 2 cores this took a 7B
// slider move from 270 ms (median) to what it costs alone.
namespace pbllm::background {

/// Interactive work is happening now (call at its start).
void interactive_now();
/// Between units of background work: returns once no interactive work ran for 300 ms.
void yield_to_interactive();
/// Threads interactive work should use now: the configured count less the running units, at least 1.
int interactive_threads();

/// A running unit of background work (single-threaded while it lives).
class Unit {
public:
    Unit();
    ~Unit();
    Unit(const Unit&) = delete;
    Unit& operator=(const Unit&) = delete;
};

} // namespace pbllm::background

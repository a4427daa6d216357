#pragma once
// Next-token sampling: greedy, temperature, top-k, top-p; seeded and platform-independent.
#include <cstdint>
#include <random>
#include <vector>

namespace pbllm {

struct SamplerSettings {
    float temperature = 0.0f; ///< 0 = greedy (argmax)
    int top_k = 0;            ///< keep the k most likely tokens; 0 = all
    float top_p = 1.0f;       ///< keep the smallest set with cumulative probability >= p; 1 = all
    std::uint64_t seed = 0;
    /// Throws Error naming the setting when a value is impossible.
    void validate() const;
};

class Sampler {
public:
    explicit Sampler(const SamplerSettings& settings);
    /// Picks a token from `logits` (n floats). Ties in greedy mode go to the lowest id.
    int sample(const float* logits, int n);

private:
    /// Uniform in [0, 1) from 53 random bits (std::uniform_real_distribution differs by platform).
    double uniform();

    SamplerSettings settings_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int>> candidates_;
};

} // namespace pbllm

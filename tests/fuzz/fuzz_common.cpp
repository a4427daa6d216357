#include "tests/fuzz/fuzz_common.h"

#include "core/synthetic.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace pbllm::fuzz {

ModelConfig tiny_config()
{
    ModelConfig c;
    c.dim = 16;
    c.hidden_dim = 32;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.vocab_size = 32;
    c.max_seq_len = 16;
    return c;
}

const ResumeRun& resume_run()
{
    static const ResumeRun run = [] {
        at::set_num_threads(1);
        ModelConfig c = tiny_config();
        c.n_layers = 2;
        ResumeRun r{make_synthetic_model(c, 5), {}, {}};
        for (int w = 0; w < 2; ++w) {
            r.windows.emplace_back();
            for (int t = 0; t < 8; ++t)
                r.windows.back().push_back((7 * w + 3 * t + 1) % c.vocab_size);
        }
        r.plan.config.layer.salient_ratio = 0.2;
        return r;
    }();
    return run;
}

std::string pack_resume_files(const ResumeFiles& files)
{
    std::string out;
    for (std::size_t n : {files.state.size(), files.layer.size()})
        for (int byte = 0; byte < 4; ++byte)
            out.push_back(static_cast<char>((n >> (8 * byte)) & 0xFF));
    return out + files.state + files.layer + files.stream;
}

ResumeFiles unpack_resume_files(const std::uint8_t* data, std::size_t size)
{
    std::size_t at = 0;
    auto length = [&] {
        std::uint32_t n = 0;
        for (int byte = 0; byte < 4; ++byte)
            n |= static_cast<std::uint32_t>(at < size ? data[at++] : 0) << (8 * byte);
        return static_cast<std::size_t>(n);
    };
    auto take = [&](std::size_t n) { // at most what the input still holds
        n = std::min(n, size - at);
        std::string s(reinterpret_cast<const char*>(data) + at, n);
        at += n;
        return s;
    };
    const std::size_t state = length(), layer = length();
    ResumeFiles f;
    f.state = take(state);
    f.layer = take(layer);
    f.stream = take(size - at);
    return f;
}

std::string scratch_file(const std::uint8_t* data, std::size_t size, const std::string& suffix)
{
    const char* tmp = std::getenv("TMPDIR");
    const std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/pbllm-fuzz-" + std::to_string(::getpid()) + suffix;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f)
        std::abort();
    if (size > 0 && std::fwrite(data, 1, size, f) != size)
        std::abort();
    std::fclose(f);
    return path;
}

} // namespace pbllm::fuzz

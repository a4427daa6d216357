#include "tests/fuzz/fuzz_common.h"

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

// QuantPlan JSON: parse, validate, serialise and parse again; the round trip must be stable.
#include "core/error.h"
#include "core/quant_config.h"

#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const pbllm::QuantPlan plan = pbllm::QuantPlan::from_json(text, "fuzz");
        const std::string again = pbllm::QuantPlan::from_json(plan.to_json(), "round trip").to_json();
        if (again != plan.to_json())
            std::abort(); // a plan that does not survive its own JSON
        (void)plan.settings_for("model.layers.0.self_attn.q_proj");
    } catch (const pbllm::Error&) {
    }
    return 0;
}

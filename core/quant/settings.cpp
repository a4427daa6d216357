#include "core/quant/settings.h"

#include "core/error.h"
#include "core/quant/registry.h"

#include <QLocale>
#include <QString>

#include <algorithm>
#include <cmath>

namespace pbllm {

namespace {

using S = LayerQuantSettings;

template <class Enum, int N>
std::vector<std::string> enum_names()
{
    std::vector<std::string> names;
    for (int i = 0; i < N; ++i)
        names.push_back(to_string(static_cast<Enum>(i)));
    return names;
}

std::vector<std::string> method_choices()
{
    std::vector<std::string> names;
    for (const MethodInfo& m : methods())
        names.push_back(m.name);
    return names;
}

double method_index(QuantMethod id)
{
    const auto& all = methods();
    for (std::size_t i = 0; i < all.size(); ++i)
        if (all[i].id == id)
            return static_cast<double>(i);
    throw Error("unknown quantization method id " + std::to_string(static_cast<int>(id)));
}

/// The shortest text that reads back as `v`.
std::string number_text(double v) { return QString::number(v, 'g', QLocale::FloatingPointShortest).toStdString(); }

} // namespace

const std::vector<SettingInfo>& layer_settings()
{
    static const std::vector<SettingInfo> table = [] {
        std::vector<SettingInfo> t;
        SettingInfo ratio{"salient_ratio", "salient", "salient ratio",
                          "Share of the weights kept at salient_bits (PB-LLM); the rest are binarized",
                          SettingKind::Real, 0.0, 1.0};
        ratio.get = [](const S& s) { return s.salient_ratio; };
        ratio.set = [](S& s, double v) { s.salient_ratio = v; };
        t.push_back(ratio);

        SettingInfo salient_bits{"salient_bits", "salient-bits", "salient bits",
                                 "Bits of the salient weights' grid, or 16 to keep them as FP16", SettingKind::Integer,
                                 2, 8, 16};
        salient_bits.get = [](const S& s) { return static_cast<double>(s.salient_bits); };
        salient_bits.set = [](S& s, double v) { s.salient_bits = static_cast<int>(v); };
        t.push_back(salient_bits);

        SettingInfo bits{"bits", "bits", "bits", "Bits of every weight's grid (plain GPTQ)", SettingKind::Integer, 2, 8};
        bits.get = [](const S& s) { return static_cast<double>(s.bits); };
        bits.set = [](S& s, double v) { s.bits = static_cast<int>(v); };
        t.push_back(bits);

        SettingInfo metric{"metric", "metric", "metric",
                           "How salience is scored: hessian (W^2 / U_jj^2 with U the Cholesky factor of H^-1, the "
                           "authors' code), magnitude (|W|, needs no calibration) or hessian-inv-diag "
                           "(W^2 / [H^-1]_jj^2, the PB-LLM paper's formula)",
                           SettingKind::Choice};
        metric.choices = enum_names<SaliencyMetric, 3>;
        metric.get = [](const S& s) { return static_cast<double>(s.metric); };
        metric.set = [](S& s, double v) { s.metric = static_cast<SaliencyMetric>(static_cast<int>(v)); };
        t.push_back(metric);

        SettingInfo binarizer{"binarizer", "binarizer", "binarizer",
                              "How non-salient weights are binarized: xnor (alpha sign(w - mu) + mu over the "
                              "non-salient weights), xnor-code (the authors' code: statistics over the row with "
                              "salient weights zeroed) or sign (alpha sign(w), no mean)",
                              SettingKind::Choice};
        binarizer.choices = enum_names<Binarizer, 3>;
        binarizer.get = [](const S& s) { return static_cast<double>(s.binarizer); };
        binarizer.set = [](S& s, double v) { s.binarizer = static_cast<Binarizer>(static_cast<int>(v)); };
        t.push_back(binarizer);

        SettingInfo method{"method", "method", "method", "The quantization method (pbllm methods lists them)",
                           SettingKind::Choice};
        method.choices = method_choices;
        method.get = [](const S& s) { return method_index(s.method); };
        method.set = [](S& s, double v) { s.method = methods()[static_cast<std::size_t>(v)].id; };
        t.push_back(method);

        SettingInfo skip{"skip", "skip", "skip", "Keep the Linear in full precision", SettingKind::Switch};
        skip.get = [](const S& s) { return s.skip ? 1.0 : 0.0; };
        skip.set = [](S& s, double v) { s.skip = v != 0.0; };
        skip.on_command_line = false;
        t.push_back(skip);

        SettingInfo search{"billm_search", "billm-search", "billm_search",
                           "What the column and break-point searches score candidates on: scores (binarize "
                           "S = W^2 / U_jj^2, the authors' code) or weights (binarize W, the papers' text)",
                           SettingKind::Choice};
        search.choices = [] { return std::vector<std::string>{"scores", "weights"}; };
        search.get = [](const S& s) { return static_cast<double>(s.block_binary.search); };
        search.set = [](S& s, double v) { s.block_binary.search = static_cast<BillmSearch>(static_cast<int>(v)); };
        search.omit_default = true;
        t.push_back(search);

        SettingInfo compensation{"billm_compensation", "billm-compensation", "billm_compensation",
                                 "How a block's error reaches the later columns: diagonal ((W - Q) / U_jj, the "
                                 "authors' code) or exact (GPTQ's column walk with Q fixed: one triangular solve)",
                                 SettingKind::Choice};
        compensation.choices = [] { return std::vector<std::string>{"diagonal", "exact"}; };
        compensation.get = [](const S& s) { return static_cast<double>(s.block_binary.compensation); };
        compensation.set = [](S& s, double v) {
            s.block_binary.compensation = static_cast<BillmCompensation>(static_cast<int>(v));
        };
        compensation.omit_default = true;
        t.push_back(compensation);

        SettingInfo cgb{"cgb", "cgb", "cgb",
                        "The column-group bitmap: split the salient columns at a break point too (preset: on for "
                        "arb-x and arb-rc, off for billm and arb)",
                        SettingKind::Choice};
        cgb.choices = [] { return std::vector<std::string>{"preset", "on", "off"}; };
        cgb.get = [](const S& s) { return static_cast<double>(s.block_binary.cgb); };
        cgb.set = [](S& s, double v) { s.block_binary.cgb = static_cast<CgbChoice>(static_cast<int>(v)); };
        cgb.omit_default = true;
        t.push_back(cgb);

        SettingInfo scale_format{"scale_format", "scale-format", "scale_format",
                                 "How arb-rc stores its row and column scales: fp16 (the paper) or log8 (8 bits: 0, "
                                 "or the block's largest scale times 2^(-k/16); half the parameter bits, steps of 4.4%)",
                                 SettingKind::Choice};
        scale_format.choices = [] { return std::vector<std::string>{"fp16", "log8"}; };
        scale_format.get = [](const S& s) { return static_cast<double>(s.block_binary.scale_format); };
        scale_format.set = [](S& s, double v) {
            s.block_binary.scale_format = static_cast<ScaleFormat>(static_cast<int>(v));
        };
        scale_format.strict = true;
        scale_format.omit_default = true;
        t.push_back(scale_format);
        return t;
    }();
    return table;
}

const SettingInfo* find_setting(const std::string& name)
{
    for (const SettingInfo& s : layer_settings())
        if (name == s.key || name == s.flag)
            return &s;
    return nullptr;
}

const SettingInfo& setting(const std::string& key)
{
    for (const SettingInfo& s : layer_settings())
        if (key == s.key)
            return s;
    throw Error("no setting is called '" + key + "'");
}

std::string SettingInfo::format(double value) const
{
    switch (kind) {
    case SettingKind::Real: return number_text(value);
    case SettingKind::Integer: return std::to_string(static_cast<long long>(value));
    case SettingKind::Choice: return choices()[static_cast<std::size_t>(value)];
    case SettingKind::Switch: return value != 0.0 ? "true" : "false";
    }
    return "?";
}

std::string SettingInfo::accepts() const
{
    switch (kind) {
    case SettingKind::Real: return "[" + number_text(min) + ", " + number_text(max) + "]";
    case SettingKind::Integer:
        return format(min) + ".." + format(max) + (extra ? " or " + std::to_string(extra) : std::string());
    case SettingKind::Choice: {
        std::string list;
        for (const std::string& c : choices())
            list += (list.empty() ? "" : ", ") + c;
        return list;
    }
    case SettingKind::Switch: return "true, false";
    }
    return "?";
}

void SettingInfo::check(double value) const
{
    const bool ok = [&] {
        switch (kind) {
        case SettingKind::Real: return value >= min && value <= max;
        case SettingKind::Integer:
            return value == std::floor(value) && ((value >= min && value <= max) || (extra && value == extra));
        case SettingKind::Choice:
            return value == std::floor(value) && value >= 0 && value < static_cast<double>(choices().size());
        case SettingKind::Switch: return value == 0.0 || value == 1.0;
        }
        return false;
    }();
    if (!ok)
        throw Error(std::string(label) + " " + number_text(value) +
                    (kind == SettingKind::Real ? " is outside " : " must be ") + accepts());
}

double SettingInfo::parse(const std::string& text) const
{
    if (kind == SettingKind::Choice) {
        const std::vector<std::string> names = choices();
        const auto it = std::find(names.begin(), names.end(), text);
        if (it == names.end())
            throw Error(std::string(label) + " '" + text + "' is not one of " + accepts());
        return static_cast<double>(it - names.begin());
    }
    if (kind == SettingKind::Switch) {
        if (text != "true" && text != "false")
            throw Error(std::string(label) + " '" + text + "' is not one of true, false");
        return text == "true" ? 1.0 : 0.0;
    }
    bool ok = false;
    const double v = QString::fromStdString(text).trimmed().toDouble(&ok);
    if (!ok)
        throw Error(std::string(label) + " '" + text + "' is not a number");
    check(v);
    return v;
}

std::string SettingInfo::describe() const
{
    return std::string(help) + " (" + accepts() + "; default " + format(default_value()) + ")";
}

namespace {

/// "arb-rc": the methods that read `key`.
std::string readers_of(const char* key)
{
    std::string names;
    for (const MethodInfo& r : methods())
        if (r.reads(key))
            names += (names.empty() ? "" : ", ") + std::string(r.name);
    return names;
}

void check_with_where(const SettingInfo& info, double v, const std::string& where)
{
    try {
        info.check(v);
    } catch (const Error& e) {
        throw Error(where + e.what());
    }
}

} // namespace

void check_setting_ranges(const LayerQuantSettings& s, const std::string& where)
{
    for (const SettingInfo& info : layer_settings())
        check_with_where(info, info.get(s), where);
}

void validate_for_method(const LayerQuantSettings& s, const std::string& where)
{
    const MethodInfo& m = method_info(s.method);
    for (const SettingInfo& info : layer_settings()) {
        if (!m.reads(info.key)) {
            if (info.strict && info.get(s) != info.default_value())
                throw Error(where + info.key + " " + info.format(info.get(s)) + " is not read by " + m.name +
                            " (only by " + readers_of(info.key) + ")");
            continue;
        }
        check_with_where(info, info.get(s), where);
    }
}

void check_strict_settings_are_read(const LayerQuantSettings& s, const std::vector<QuantMethod>& used,
                                    const std::string& where)
{
    for (const SettingInfo& info : layer_settings()) {
        if (!info.strict || info.get(s) == info.default_value())
            continue;
        std::vector<std::string> names;
        bool read = false;
        for (QuantMethod id : used) {
            read |= method_info(id).reads(info.key);
            if (std::find(names.begin(), names.end(), to_string(id)) == names.end())
                names.push_back(to_string(id));
        }
        if (read)
            continue;
        std::string list;
        for (const std::string& n : names)
            list += (list.empty() ? "" : ", ") + n;
        throw Error(where + info.key + " " + info.format(info.get(s)) + " is not read by " +
                    (names.size() > 1 ? "any of " : "") + list + " (only by " + readers_of(info.key) + ")");
    }
}

std::vector<QuantMethod> plan_methods(const QuantPlan& plan)
{
    std::vector<QuantMethod> used{plan.config.layer.method};
    for (const PlanRule& r : plan.rules) {
        LayerQuantSettings s = plan.config.layer;
        r.apply(s);
        used.push_back(s.method);
    }
    return used;
}

void drop_unread_strict_settings(QuantPlan& plan)
{
    const std::vector<QuantMethod> used = plan_methods(plan);
    for (const SettingInfo& info : layer_settings()) {
        if (!info.strict)
            continue;
        const bool read = std::any_of(used.begin(), used.end(), [&](QuantMethod id) { return method_info(id).reads(info.key); });
        if (!read)
            info.copy(LayerQuantSettings{}, plan.config.layer);
    }
}

void set_default_method(QuantPlan& plan, QuantMethod id)
{
    plan.config.layer.method = id;
    drop_unread_strict_settings(plan);
}

} // namespace pbllm

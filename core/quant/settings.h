#pragma once
// The per-Linear settings (the fields of LayerQuantSettings) as one table: plan JSON key,
// command-line flag, label, help, range or choices, default. Plans (their defaults and rules),
// the flags of `pbllm quantize` and `pbllm sweep`, validation and the studio's forms are built
// from these rows; a method's row in the registry lists the keys it reads.
#include "core/quant_config.h"

#include <string>
#include <vector>

namespace pbllm {

enum class SettingKind {
    Real,    ///< a number in [min, max]
    Integer, ///< an integer in [min, max], or `extra`
    Choice,  ///< one of choices(); the value is its index
    Switch,  ///< true or false (1 or 0)
};

/// One setting. Values travel as doubles: the number, the choice index, or 1/0.
struct SettingInfo {
    const char* key;   ///< plan JSON key ("salient_ratio")
    const char* flag;  ///< command-line flag ("salient")
    const char* label; ///< for messages and the studio ("salient ratio")
    const char* help;
    SettingKind kind;
    double min = 0.0, max = 0.0;                    ///< Real, Integer
    int extra = 0;                                  ///< Integer: one more allowed value (salient_bits 16); 0 = none
    std::vector<std::string> (*choices)() = nullptr; ///< Choice: the names, in value order
    double (*get)(const LayerQuantSettings&) = nullptr;
    void (*set)(LayerQuantSettings&, double) = nullptr;
    /// Off its default for a method that does not read it, the setting is refused rather than
    /// ignored (ARB-RC's 8-bit scales asked of arb would silently mean nothing).
    bool strict = false;
    /// Written to plan JSON only when off its default (plans from before it stay byte-identical).
    bool omit_default = false;
    bool on_command_line = true; ///< a flag of pbllm quantize and sweep (skip is a rule's business)

    double default_value() const { return get(LayerQuantSettings{}); }
    /// "0.1", "8", "hessian", "true".
    std::string format(double value) const;
    /// Parses command-line or plan text; Error naming the setting and what it accepts.
    double parse(const std::string& text) const;
    /// Error naming the setting when `value` is out of range.
    void check(double value) const;
    /// What it accepts: "[0, 1]", "2..8 or 16", "magnitude, hessian, hessian-inv-diag".
    std::string accepts() const;
    /// The help text with what it accepts and the default, for --help and tooltips.
    std::string describe() const;
    /// Copies this setting from `from` into `to`.
    void copy(const LayerQuantSettings& from, LayerQuantSettings& to) const { set(to, get(from)); }
};

/// Every per-Linear setting, in the order of help texts and plan files.
const std::vector<SettingInfo>& layer_settings();
/// The row whose key or flag is `name`, or nullptr.
const SettingInfo* find_setting(const std::string& name);
/// The row whose key is `key`; Error when there is none (a programming error).
const SettingInfo& setting(const std::string& key);

/// Error naming the first setting of `s` that is out of range, whether its method reads it or
/// not (a plan's defaults and rules). `where` prefixes the message ("rule '*.mlp.*': ").
void check_setting_ranges(const LayerQuantSettings& s, const std::string& where = "");
/// What one Linear's quantizer needs: the settings `s.method` reads in range, and no strict
/// setting off its default that it does not read (asked for, it would silently mean nothing).
void validate_for_method(const LayerQuantSettings& s, const std::string& where = "");
/// Error unless one of `used` reads each strict setting of `s` that is off its default.
void check_strict_settings_are_read(const LayerQuantSettings& s, const std::vector<QuantMethod>& used,
                                    const std::string& where = "");

/// The methods `plan` runs: its default method, then each rule's (over the defaults).
std::vector<QuantMethod> plan_methods(const QuantPlan& plan);
/// Puts the plan-wide strict settings that none of the plan's methods reads back to their
/// defaults (a plan stored before the check, or one whose method was switched). Rules keep theirs.
void drop_unread_strict_settings(QuantPlan& plan);
/// Switches the plan's default method, then drop_unread_strict_settings: rules that still read a
/// plan-wide strict setting keep it.
void set_default_method(QuantPlan& plan, QuantMethod id);

} // namespace pbllm

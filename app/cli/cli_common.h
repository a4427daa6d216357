#pragma once
// Shared plumbing of the pbllm subcommands: option parsing, model loading, output.
#include <QCommandLineParser>
#include <QJsonObject>
#include <QStringList>

#include <string>

namespace pbllm {
struct Model;
class Tokenizer;
struct ModelLocation;
struct BitsPerWeight;
} // namespace pbllm

namespace pbllm::cli {

/// Usage errors (exit code 2), as opposed to pbllm::Error (exit code 1).
struct UsageError {
    std::string message;
};

/// A subcommand's parser with the options every command has (--threads, --json, --device).
class CommandLine {
public:
    CommandLine(const QString& command, const QString& description, const QString& positional_syntax);
    QCommandLineParser& parser() { return parser_; }
    /// Parses `args` (argv[0] and the subcommand name first); handles --help; applies --threads.
    void parse(const QStringList& args);
    bool json() const { return parser_.isSet("json"); }
    QString value(const QString& name) const { return parser_.value(name); }
    bool is_set(const QString& name) const { return parser_.isSet(name); }
    int int_value(const QString& name, int min, int max) const;
    double double_value(const QString& name, double min, double max) const;
    /// MODEL argument, or the default model when it was omitted.
    std::string model_path();
    /// Loads the model (on --device) and remembers its tokenizer path (--tokenizer wins).
    /// `mapped`: keep the file's F16/BF16 weights memory-mapped instead of converting them to
    /// float32 (the commands whose engine reads them so: eval, generate, info).
    Model load_model(bool mapped = false, bool check_finite = true);
    Model load_model_at(const std::string& path, bool mapped = false, bool check_finite = true);
    /// Adds --packed on|off: run a packed checkpoint's quantized Linears from their bits (on,
    /// the default) or dequantized to float32 (off), read by load_model.
    void add_packed_option();
    /// The model's tokenizer; Error when there is none.
    Tokenizer load_tokenizer(const Model& model) const;

private:
    QCommandLineParser parser_;
    QString command_;
    QString default_tokenizer_;
    bool packed_option_ = false;
};

/// Prints one JSON object on stdout.
void print_json(const QJsonObject& object);
/// A progress printer for stderr (active only when stderr is a terminal).
bool print_progress(double fraction, std::string_view stage);

int run_info(const QStringList& args);
int run_eval(const QStringList& args);
int run_generate(const QStringList& args);
int run_convert(const QStringList& args);
int run_synth(const QStringList& args);
int run_bench(const QStringList& args);
int run_calibrate(const QStringList& args);
int run_saliency(const QStringList& args);
int run_quantize(const QStringList& args);
int run_methods(const QStringList& args);
int run_sweep(const QStringList& args);
int run_qat(const QStringList& args);
int run_tokenize(const QStringList& args);

/// JSON of a packed model's bit accounting: {"headline", "with_bitmap", "with_index", "measured"}.
QJsonObject bits_json(const BitsPerWeight& bits);

} // namespace pbllm::cli

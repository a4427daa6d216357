#include "app/cli/cli_common.h"

#include "core/error.h"
#include "core/model.h"
#include "core/model_io.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/Context.h>
#include <QJsonDocument>

#include <cstdio>
#include <unistd.h>

namespace pbllm::cli {

CommandLine::CommandLine(const QString& command, const QString& description, const QString& positional_syntax)
    : command_(command)
{
    parser_.setApplicationDescription(description);
    parser_.addHelpOption();
    parser_.addOption({"json", "Print one JSON object on stdout."});
    parser_.addOption({"threads", "Intra-op threads (default: all cores, or OMP_NUM_THREADS).", "N", "0"});
    parser_.addOption({"device", "cpu, or cuda[:N] when the linked libtorch has CUDA.", "DEVICE", "cpu"});
    if (!positional_syntax.isEmpty())
        parser_.addPositionalArgument("MODEL", "Model file or folder (default: stories260K).", positional_syntax);
}

void CommandLine::parse(const QStringList& args)
{
    QStringList rest = args;
    rest.removeAt(1); // the subcommand; QCommandLineParser sees "pbllm <options>"
    rest[0] = "pbllm " + command_;
    if (!parser_.parse(rest))
        throw UsageError{parser_.errorText().toStdString()};
    if (parser_.isSet("help")) {
        std::fputs(qPrintable(parser_.helpText()), stdout);
        std::exit(0);
    }
    configure_runtime(int_value("threads", 0, 4096));
}

int CommandLine::int_value(const QString& name, int min, int max) const
{
    bool ok = false;
    const int v = parser_.value(name).toInt(&ok);
    if (!ok || v < min || v > max)
        throw UsageError{"--" + name.toStdString() + " must be an integer in [" + std::to_string(min) + ", " +
                         std::to_string(max) + "] (got '" + parser_.value(name).toStdString() + "')"};
    return v;
}

double CommandLine::double_value(const QString& name, double min, double max) const
{
    bool ok = false;
    const double v = parser_.value(name).toDouble(&ok);
    if (!ok || !(v >= min && v <= max))
        throw UsageError{"--" + name.toStdString() + " must be a number in [" + std::to_string(min) + ", " +
                         std::to_string(max) + "] (got '" + parser_.value(name).toStdString() + "')"};
    return v;
}

std::string CommandLine::model_path()
{
    const QStringList pos = parser_.positionalArguments();
    if (pos.size() > 1)
        throw UsageError{"expected one MODEL, got " + std::to_string(pos.size()) + " arguments"};
    if (!pos.isEmpty())
        return pos.front().toStdString();
    const ModelLocation where = locate_default_model(print_progress);
    default_tokenizer_ = QString::fromStdString(where.tokenizer_path);
    return where.model_path;
}

Model CommandLine::load_model(bool mapped, bool check_finite)
{
    return load_model_at(model_path(), mapped, check_finite);
}

Model CommandLine::load_model_at(const std::string& path, bool mapped, bool check_finite)
{
    LoadOptions options;
    options.storage = mapped ? WeightStorage::Mapped : WeightStorage::Float32;
    options.check_finite = check_finite;
    if (parser_.optionNames().contains("tokenizer") && parser_.isSet("tokenizer"))
        options.tokenizer_path = parser_.value("tokenizer").toStdString();
    else
        options.tokenizer_path = default_tokenizer_.toStdString();
    const std::string device = parser_.value("device").toStdString();
    try {
        options.device = c10::Device(device);
    } catch (const std::exception&) {
        throw UsageError{"--device '" + device + "' is not a device (use cpu or cuda[:N])"};
    }
    if (options.device.is_cuda() && !at::hasCUDA())
        throw Error("--device " + device + ": this build's libtorch has no CUDA support (rebuild against a CUDA "
                    "libtorch, see README)");
    if (packed_option_) {
        const QString packed = parser_.value("packed");
        if (packed != "on" && packed != "off")
            throw UsageError{"--packed must be on or off (got '" + packed.toStdString() + "')"};
        options.packed = packed == "on";
    }
    Model m = pbllm::load_model(path, options);
    for (const std::string& note : m.notes)
        std::fprintf(stderr, "note: %s\n", note.c_str());
    return m;
}

void CommandLine::add_packed_option()
{
    parser_.addOption({"packed", "Packed checkpoints: run quantized Linears from their bits with the packed kernels "
                                 "(on, default) or dequantized to float32 (off).", "on|off", "on"});
    packed_option_ = true;
}

Tokenizer CommandLine::load_tokenizer(const Model& model) const { return tokenizer_for(model); }

void print_json(const QJsonObject& object)
{
    std::fputs(QJsonDocument(object).toJson(QJsonDocument::Indented).constData(), stdout);
    std::fflush(stdout);
}

bool print_progress(double fraction, std::string_view stage)
{
    static const bool tty = ::isatty(STDERR_FILENO);
    if (tty) {
        std::fprintf(stderr, "\r%.*s %5.1f%%", static_cast<int>(stage.size()), stage.data(), fraction * 100.0);
        if (fraction >= 1.0)
            std::fputs("\r\033[K", stderr);
        std::fflush(stderr);
    }
    return true;
}

} // namespace pbllm::cli

// pbllm: the command line of PB-LLM Studio. Each subcommand lives in its own function; this file
// only dispatches and turns errors into messages and exit codes.
#include "app/cli/cli_common.h"
#include "core/error.h"
#include "core/system.h"

#include <QCoreApplication>

#include <cstdio>
#include <exception>
#include <map>

namespace {

void print_usage()
{
    std::fputs("usage: pbllm <command> [options]\n"
               "\n"
               "commands:\n"
               "  info      MODEL                 architecture, tensors, statistics, file size\n"
               "  eval      MODEL --text FILE     perplexity (GPTQ protocol)\n"
               "  generate  MODEL --prompt TEXT   text generation (greedy or sampled)\n"
               "  convert   MODEL --to hf -o DIR  write the model in another format\n"
               "  calibrate MODEL --calib TEXT -o CALIB.h5   calibration windows and Hessians\n"
               "  saliency  MODEL --calib CALIB.h5           salient-weight statistics per Linear\n"
               "  quantize  MODEL --calib TEXT|CALIB.h5 -o OUT.pbllm.h5   PB-GPTQ / RTN / GPTQ / BiLLM / ARB\n"
               "  methods                         the quantization methods and their settings\n"
               "  sweep     MODEL --calib TEXT --eval TEXT   methods x settings: PPL against measured bits\n"
               "  qat       MODEL --train TEXT -o OUT.pbllm.h5            quantization-aware training\n"
               "  bench                           speed of evaluation and generation\n"
               "  synth     --shape NAME -o DIR   a SYNTHETIC model of a real shape, for benchmarks\n"
               "  tokenize  [MODEL] --text TEXT   token ids (SentencePiece or tokenizer.json)\n"
               "\n"
               "MODEL is a llama2.c .bin, a Hugging Face folder or .safetensors, or a .pbllm.h5 file;\n"
               "when omitted, the default model (stories260K) is used.\n"
               "Run 'pbllm <command> --help' for a command's options.\n",
               stdout);
}

} // namespace

int main(int argc, char** argv)
{
    QCoreApplication app(argc, argv);
    QCoreApplication::setApplicationName("pbllm");
    QCoreApplication::setApplicationVersion(PBLLM_VERSION);
    const QStringList args = QCoreApplication::arguments();
    if (args.size() < 2 || args[1] == "--help" || args[1] == "-h" || args[1] == "help") {
        print_usage();
        return args.size() < 2 ? 2 : 0;
    }
    if (args[1] == "--version") {
        std::printf("pbllm %s\n", PBLLM_VERSION);
        return 0;
    }
    using Command = int (*)(const QStringList&);
    const std::map<QString, Command> commands = {
        {"info", pbllm::cli::run_info},         {"eval", pbllm::cli::run_eval},
        {"generate", pbllm::cli::run_generate}, {"convert", pbllm::cli::run_convert},
        {"bench", pbllm::cli::run_bench},         {"calibrate", pbllm::cli::run_calibrate},
        {"saliency", pbllm::cli::run_saliency},   {"quantize", pbllm::cli::run_quantize},
        {"qat", pbllm::cli::run_qat},           {"synth", pbllm::cli::run_synth},
        {"tokenize", pbllm::cli::run_tokenize},   {"methods", pbllm::cli::run_methods},
        {"sweep", pbllm::cli::run_sweep},
    };
    const auto command = commands.find(args[1]);
    if (command == commands.end()) {
        std::fprintf(stderr, "pbllm: unknown command '%s' (see 'pbllm --help')\n", qPrintable(args[1]));
        return 2;
    }
    try {
        return command->second(args);
    } catch (const pbllm::cli::UsageError& e) {
        std::fprintf(stderr, "pbllm %s: %s\n", qPrintable(args[1]), e.message.c_str());
        return 2;
    } catch (const pbllm::Cancelled&) {
        std::fprintf(stderr, "pbllm %s: cancelled\n", qPrintable(args[1]));
        return 130;
    } catch (const std::exception& e) {
        // pbllm::Error carries a message for people; libtorch errors get their first line only.
        std::string message = e.what();
        if (const auto nl = message.find('\n'); nl != std::string::npos)
            message.resize(nl);
        std::fprintf(stderr, "pbllm %s: %s\n", qPrintable(args[1]), message.c_str());
        return 1;
    }
}

"""Build the project's tiny WordPiece tokenizer, shipped in the tiny variants' folders (hub_configs/*-tiny/).

The paper configs use bert-base-uncased's tokenizer from the Hub; the tiny configs (tests, the synthetic
dataset, the demo) need one that ships with the project and loads offline. This script builds a lowercase,
BERT-style WordPiece tokenizer with the `tokenizers` library (BertNormalizer, BertPreTokenizer, WordPiece,
[CLS] ... [SEP] template) whose vocabulary is:

- the special tokens, [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, as in BERT;
- ASCII letters, digits and punctuation, the letters and digits also as ``##`` continuations, so that any
  ASCII word tokenizes without [UNK] (accents are stripped by the normalizer);
- ``##`` pieces for regular English endings (##ing, ##ed, ##tion, ...);
- the word lists below (common English, the words of Localized-Narratives-style captions, the COCO panoptic
  thing and stuff categories, colours, shapes, positions, numbers) with regular plural / verb forms;
- the synthetic dataset's vocabulary (`narrative_grounding.data.synthetic.VOCABULARY`) when that module is
  importable, so every word a synthetic narrative uses is one token.

The output is deterministic: run it again to regenerate the committed files.

    python scripts/build_tiny_tokenizer.py [--output DIR [DIR ...]]
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

REPO = Path(__file__).resolve().parents[1]
#: The variants that ship the tiny tokenizer (each Hub repository folder holds its own copy).
DEFAULT_OUTPUTS = [REPO / "hub_configs" / "epng-tiny", REPO / "hub_configs" / "drmn-tiny"]

# [PAD] first so that its id is 0, as in BERT (the model and collators pad input_ids with 0).
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

FUNCTION_WORDS = """
the a an this that these those there here it its it's they them their we us our you your he him his she her
i me my mine is are was were be been being am has have had do does did done not no nor and or but so if then
than as at by for from in into of off on onto out over under up down with within without to too very also
only just more most less least much many some any all both each every few other another such same own which
what who whom whose where when why how while because although though until before after above below between
behind beside besides near nearby around along across through toward towards against among upon beneath
inside outside can could will would shall should may might must one two three four five six seven eight
nine ten eleven twelve first second third last next again once ever never always often sometimes still yet
already almost about like unlike via per whole half part parts lot lots kind sort type don't doesn't isn't
aren't can't won't there's here's let's we'll i'm you're they've cafe
"""

NARRATIVE_WORDS = """
image picture photo photograph scene view frame background foreground front back middle center centre corner
side sides top bottom left right edge edges area region part surface place space portion visible see seen
saw look looks looking observe observed find found show shows showing shown appear appears appearing
describe describing mention think able can also we us in this image picture there is are
sit sits sitting sat stand stands standing stood walk walks walking walked run runs running ran hold holds
holding held wear wears wearing wore ride rides riding rode play plays playing played look looking eat eats
eating ate drink drinking lie lying lay lean leaning hang hanging hung carry carrying fly flying flew swim
swimming jump jumping throw throwing catch catching kick kicking hit hitting smile smiling talk talking
watch watching park parked parking cover covered covering fill filled place placed put keep kept attach
attached connect connected mount mounted stack stacked arrange arranged scatter scattered grow growing
move moving stop stopped cross crossing face facing point pointing touch touching pull pulling push pushing
cut cutting cook cooking serve served read reading write writing open opened close closed light lit
reflect reflection reflections shadow shadows shade
"""

PEOPLE_AND_BODY = """
person people man men woman women boy boys girl girls child children kid kids baby babies guy lady player
players crowd group team family friend friends couple rider skier surfer skateboarder driver chef waiter
police officer soldier worker student teacher audience spectator spectators
head face hair eye eyes nose mouth ear ears hand hands arm arms leg legs foot feet finger fingers shoulder
neck body back knee
shirt t-shirt jacket coat dress skirt pants jeans shorts shoe shoes boot boots hat cap helmet glasses
sunglasses scarf gloves glove uniform suit tie belt sock socks sweater hoodie jersey vest costume bag
backpack purse watch necklace bracelet ring mask apron
"""

COCO_THINGS = """
person bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign parking
meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase
frisbee skis snowboard sports ball kite baseball bat glove skateboard surfboard tennis racket bottle wine
glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot dog pizza donut cake chair
couch potted plant bed dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster
sink refrigerator book clock vase scissors teddy hair drier toothbrush
"""

COCO_STUFF = """
banner blanket bridge cardboard counter curtain door floor wood flower flowers fruit gravel house light mirror
net pillow platform playingfield railroad river road roof sand sea shelf snow stairs tent towel wall brick
stone tile water window blind tree trees fence ceiling sky cabinet table pavement mountain mountains grass
dirt paper food building buildings rock rocks rug merged other
"""

SCENE_WORDS = """
street sidewalk path lane highway field yard garden lawn forest wood woods hill hills valley beach shore
ocean lake pond wave waves cloud clouds sun moon star stars rain ground land soil mud leaf leaves branch
branches bush bushes plant plants pole poles post wire wires cable sign signs board boards poster posters
text letter letters number numbers logo flag flags lamp lamps bulb candle room kitchen bathroom bedroom
office shop store restaurant market station airport stadium court track city town village street road car
vehicle vehicles van taxi cart wheel wheels tire tires engine seat seats window windows door doors glass
mirror screen monitor computer phone desk shelf shelves box boxes basket container jar plate plates tray
pot pan bowl cup mug bottle can bag paper tissue cloth fabric carpet mat floor tiles bricks stones
metal wooden plastic glass concrete steel iron object objects thing things item items
toy toys ball balls rope net goal racket bat helmet kite skateboard surfboard snowboard ski skis
animal animals dog dogs cat cats horse horses cow cows sheep bird birds duck ducks fish elephant elephants
giraffe giraffes zebra zebras bear bears monkey lion tiger deer goat pig chicken
food meal bread cheese meat vegetables vegetable salad soup rice egg eggs sauce tomato tomatoes onion
potato potatoes fries coffee tea juice milk water wine beer dessert cookie cookies chocolate
"""

COLOURS_SHAPES_POSITIONS = """
red blue green yellow orange purple pink brown black white gray grey golden silver cyan magenta violet
maroon navy beige cream dark light bright pale colour color colours colors colorful colored coloured
circle circles square squares triangle triangles star stars rectangle rectangles diamond diamonds ellipse
oval hexagon pentagon cross heart shape shapes disk ring stripe stripes striped dot dots dotted line lines
round flat curved straight
left right top bottom upper lower middle center centre above below under over beside next to near far
close closer closest farther front behind between inside outside corner corners side edge leftmost
rightmost topmost bottommost horizontal vertical diagonal
big bigger biggest small smaller smallest large larger largest tiny huge little long longer short shorter
tall taller high higher low lower wide narrow thick thin heavy full empty new old young clean dirty wet dry
hot cold warm soft hard open closed tiny giant single double multiple several various different same
similar other another both many few
"""

ENGLISH_WORDS = """
time year years day days night morning evening today way world life hand part child eye woman place work
week case point government company number group problem fact home water room mother father area money story
month lot right study book job word business issue side kind head house service friend power hour game line
end member law car city community name president team minute idea body information parent others level
office door health art war history party result change reason research girl guy moment air teacher force
education say get make go know take come give use find tell ask seem feel try leave call want need become
put mean keep let begin help show hear play move live believe bring happen provide include continue set
learn lead understand follow stop create speak allow add spend grow offer remember love consider appear buy
wait die send expect build stay fall reach kill remain suggest raise pass sell require report decide pull
good new first last long great own other old right big high different small large next early important few
public bad same able sure clear real best better free whole true possible local late hard major social
special strong easy available likely recent simple nice main ready fine certain final beautiful happy
well even back now way still really here just also then there again ever far away together later
yes hello thanks please okay maybe probably actually especially usually mostly partly mainly quite rather
something nothing anything everything someone somebody everyone nobody where everywhere somewhere
"""


MORE_ENGLISH = """
ability accept according account across act action active activity actor add address admit adult affect
afraid afternoon age agency agent ago agree agreement ahead allow almost alone already although amount
analysis ancient anger angle angry animal announce annual answer anyone apartment apparent approach april
argue argument arm army arrive article artist aside assume attack attempt attend attention august author
authority avoid baby background balance band bank bar base basic basis battle beat beauty bed beginning
behavior benefit beyond billion birth bit blood blow boat bone border born boss bottle bowl brain break
breakfast breath brief brother budget burn busy button cake camera campaign cancer candidate capital captain
card care career careful carry catch cause cell century chain chair chairman challenge champion chance
channel chapter character charge cheap check chief choice choose church citizen civil claim class classic
clean climb clock closely clothes club coach coast collection college column combination comfortable
command comment common compare competition complete computer concept concern condition conference confirm
congress connection contact contain content context contract control conversation cook cool copy corner
cost count country county courage course cousin cover crash crazy create creature credit crime crisis
critical crowd cry culture curious current customer cycle dad daily damage dance danger data date daughter
dead deal dear death debate decade decision deep defense degree deliver demand department depend describe
desert design desire despite detail determine develop device die diet difference difficult dinner
direction director discover discussion disease distance district divide doctor document dollar dream dress
drive drop drug due during dust duty eager ear earth east economy edge effect effort either election
element else emergency emotion employee energy enjoy enough enter entire environment equal equipment escape
especially establish event evidence exact exactly example exercise exist expensive experience expert
explain express extra extreme fail fair faith familiar famous fan farm farmer fast fat fear feature federal
fee feeling fight figure file film final finally finance finger finish fire firm fish fit fix floor
focus folk follow force foreign forget form former forward frame frequently fresh friendly fruit fuel fun
function fund funny future gain gallery gap garage gas gate gather general generation gentle gift glad
goal god gold golf gone grab grade grand grandfather grandmother grant green grey gun hall handle happy hat
hate heat heaven heavy height hell hero hide highly hire hold hole holiday honest hope horrible hospital
host hot hotel huge human humor hungry hunt hurry hurt husband ice identify ignore ill image imagine impact
improve incident income increase indeed independent indicate individual industry influence inside instead
institution interest international interview introduce invest investigation invite involve island issue
jacket join joke journey judge jump junior justice key king kiss kitchen knee knock knowledge lab labor
lack lady lake land language laugh layer lead leader league learn leather lecture legal lesson letter
library license lift limit list listen little loan lock lonely loose lose loss loud lucky lunch machine
magazine mail maintain manage manager map mark marriage master match material matter meaning measure media
medical meet meeting memory mental message method middle might military mind minor miss mission mistake
mix model modern moment morning mountain movie murder muscle museum music mystery narrow nation natural
nature nearly neck neighbor nerve network nice normal north note notice novel nurse object obvious
occasion ocean offer officer official oil once operation opinion opportunity option order ordinary
organization original otherwise pack page pain paint painting pair palace panel paper parent park
particular partner party passenger past patient pattern pay peace peak pen pencil perfect perform
perhaps period permission personal photo physical piano pick piece pile pilot pink pipe plan planet plastic
plate platform pleasant pocket poem poet police policy politics pool poor popular population port position
positive pound powder practice prepare present press pressure pretty prevent price pride prince princess
print prison private prize produce product professor program progress project promise proper protect
proud prove pure purpose quality quarter queen question quick quiet race radio range rate reaction ready
reality receive recognize record recover reduce reflect region relation release religion remove rent
repeat reply represent request rescue resource respond rest restaurant return reveal rich ride ring rise
risk river role roll romantic root rough route row royal rule rush sad safe sail salt sample save scale
scared schedule scheme school science score screen sea search season secret section secure seek select
sense separate series serious servant session settle shake shape share sharp sheet shell shift shine ship
shock shoot shop shot shout shut sick silence silly silver simply sing singer sister site situation size
skill skin sky sleep slide slightly slow smell smoke smooth snake social society soft soldier solid
solution son song soon sorry soul sound soup source south speech speed spirit split sport spot spread
spring square staff stage stair stamp standard state statement steady steal step stick stone storm straight
strange stranger stream strength stress stretch strike structure struggle style subject success suddenly
sugar suit summer supply support surprise survey sweet swing symbol system tail talent target task taste
tax tear technology telephone television temperature term terrible test thank theory thin thought threat
throat ticket tie tight tiny tip tired title tomorrow tone tongue tonight tool tooth topic total tour
tourist towel tower town trade tradition traffic trail train transport travel treat trial trick trip
trouble truck trust truth turn twice uncle unit universe university unless upset urban valley value various
victim victory village visit voice volume vote wake wall war warm warn wash waste wave weak wealth weapon
weather wedding weekend weight west wheel whisper wide wife wild win wind wing winner winter wise wish
witness wonder wooden worry worth wrap wrong yard yellow young youth zone
"""

NUMBERS = " ".join(str(n) for n in range(0, 101)) + " zero hundred thousand dozen pair pairs couple"

WORD_LISTS = {
    "function": FUNCTION_WORDS,
    "narrative": NARRATIVE_WORDS,
    "colours_shapes_positions": COLOURS_SHAPES_POSITIONS,
    "coco_things": COCO_THINGS,
    "coco_stuff": COCO_STUFF,
    "people": PEOPLE_AND_BODY,
    "scene": SCENE_WORDS,
    "english": ENGLISH_WORDS,
    "more_english": MORE_ENGLISH,
    "numbers": NUMBERS,
}


def synthetic_vocabulary() -> list[str]:
    """The synthetic generator's words (every one must be a single token of the tiny tokenizer)."""
    from narrative_grounding.data.synthetic import VOCABULARY  # the installed package (or PYTHONPATH=src)

    return sorted({word.lower() for word in VOCABULARY})


def inflections(word: str) -> list[str]:
    """Regular plural / third-person and -ing forms, so common variants are single tokens too."""
    if not word.isalpha() or len(word) < 3:
        return []
    if word.endswith(("s", "x", "ch", "sh")):
        return [word + "es"]
    if word.endswith("y") and word[-2] not in "aeiou":
        return [word[:-1] + "ies"]
    return [word + "s"]


# Continuation pieces for regular English endings: a word missing from the lists still splits into a known
# stem plus ending (or, failing that, single characters) rather than [UNK].
SUFFIXES = """
s es ed d ing er ers est ly y ies ied ion ions tion tions sion ness ment ments able ible ful less al ial ic ical
ous ive ity ize ise ized ised ish en an ian ist ists ism ward wards like th ty ry or ors age ance ence ant ent
ate ated ating ure ures ier iest ily ling lings let lets ship hood some way ways side sides room man men
"""


def build_vocabulary() -> tuple[list[str], list[str]]:
    """The vocabulary in id order and the sorted list of listed words (each one token).

    Built explicitly rather than with `tokenizers`' WordPiece trainer: the trainer breaks ties between
    equally frequent merges in hash order, so its vocabulary changed between runs; this one is the same
    every time (special tokens, characters, ``##`` characters, ``##`` endings, then words, each sorted).
    """
    words: set[str] = set()
    for text in WORD_LISTS.values():
        for word in text.split():
            words.add(word)
            words.update(inflections(word))
    words.update(synthetic_vocabulary())
    # The BERT pre-tokenizer splits on punctuation, so "don't" or "t-shirt" can never be one token.
    # Keep their parts instead ("don", "t"), which is how such words reach the WordPiece model.
    split = {part for word in words for part in re.split(f"[{re.escape(string.punctuation)}]", word)}
    words = {word for word in split if word}
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    continuations = [f"##{char}" for char in string.ascii_lowercase + string.digits]
    endings = sorted({f"##{suffix}" for suffix in SUFFIXES.split()} - set(continuations))
    taken = set(SPECIAL_TOKENS) | set(characters) | set(continuations) | set(endings)
    ordered_words = sorted(words - taken)
    vocabulary = [*SPECIAL_TOKENS, *characters, *continuations, *endings, *ordered_words]
    return vocabulary, sorted(words)


def build_tokenizer() -> tuple[Tokenizer, list[str]]:
    vocabulary, words = build_vocabulary()
    model = WordPiece(
        vocab={token: index for index, token in enumerate(vocabulary)},
        unk_token="[UNK]",
        continuing_subword_prefix="##",
        max_input_chars_per_word=100,
    )
    tokenizer = Tokenizer(model)
    # As bert-base-uncased: clean text, split CJK characters, strip accents, lowercase; split on whitespace
    # and punctuation (the fast tokenizer keeps character offsets into the original string through this).
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = vocabulary.index("[CLS]"), vocabulary.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer, words


def save_tokenizer(tokenizer: Tokenizer, vocab: dict[str, int], output: Path) -> None:
    from transformers import BertTokenizerFast  # noqa: PLC0415 (heavy import, only when building)

    fast = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=True, model_max_length=512)
    output.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(output))
    # transformers 5 writes only tokenizer.json + tokenizer_config.json; vocab.txt (one token a line, in id
    # order) is what BERT-style tools read, special_tokens_map.json what older transformers read.
    by_id = sorted(vocab, key=vocab.__getitem__)
    (output / "vocab.txt").write_text("\n".join(by_id) + "\n", encoding="utf-8")
    special_map = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    (output / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    # check that the folder reloads to the same vocabulary
    reloaded = BertTokenizerFast.from_pretrained(str(output))
    vocab_txt = (output / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if reloaded.get_vocab() != vocab or {token: index for index, token in enumerate(vocab_txt)} != vocab:
        raise RuntimeError(f"the tokenizer saved in {output} does not reload to the same vocabulary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, nargs="+", default=DEFAULT_OUTPUTS)
    args = parser.parse_args(argv)

    tokenizer, words = build_tokenizer()
    vocab = tokenizer.get_vocab()
    for position, token in enumerate(SPECIAL_TOKENS):
        if vocab[token] != position:
            raise RuntimeError(f"special token {token} got id {vocab[token]}, expected {position}")
    for output in args.output:
        save_tokenizer(tokenizer, vocab, output)
    split_words = [word for word in words if len(tokenizer.encode(word, add_special_tokens=False).ids) > 1]
    print(f"vocab_size={len(vocab)} words={len(words)} split_into_pieces={len(split_words)} -> {args.output}")
    if split_words:
        print("words that are more than one token:", " ".join(split_words[:50]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seeded synthetic clinical-note generator (the offline default dataset of ``steu demo``).

Everything produced here is **synthetic**: the notes are assembled from hand-written
templates and vocabulary lists with randomly sampled ages, vitals and lab values. No
real patient data, and nothing derived from real records, is involved.

The generator exists so that ``steu demo`` (and tests) have a small multi-label text
classification task that needs no download. Each note is a short (roughly 60-200 word)
clinic/ward note with the usual sections (chief complaint, HPI, PMH, medications,
social history, vitals, exam, labs, assessment and plan), written with common clinical
abbreviations ("pt", "h/o", "SOB", "BID", ...) and negations ("denies chest pain").

Labels are specialties from :data:`CATEGORIES`. Every category has its own vocabulary
(diagnoses, symptoms, drugs, tests, procedures), but the task is deliberately not
trivial:

* related categories share terms (dyspnea/edema for cardiology, pulmonology and
  nephrology; fever/cough for infectious disease and pulmonology; diabetes and CKD
  linking endocrinology and nephrology; syncope/palpitations/altered mental status
  crossing cardiology, endocrinology, neurology and infectious disease);
* a large generic vocabulary (vitals, routine labs, social history, follow-up) is
  shared by all notes;
* many notes mention *distractor* terms of a category they are not labelled with,
  inside negations, past or family history;
* the amount of category-specific signal per note varies, and base rates differ a
  little between categories.

Usage::

    from steu_ext.experiments.synthetic import generate_notes, CATEGORIES
    data = generate_notes(n_docs=1200, seed=0)
    data["text"][0], data["labels"][0], data["label_names"]

Generation is fully deterministic for a given ``seed`` (a private ``random.Random``
instance is used; global random state is never touched) and depends only on the
standard library.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Sequence, Tuple

__all__ = ["CATEGORIES", "generate_notes"]

CATEGORIES: Tuple[str, ...] = (
    "cardiology",
    "pulmonology",
    "nephrology",
    "endocrinology",
    "infectious disease",
    "neurology",
)

# Slightly uneven base rates for the primary label (normalised internally).
_BASE_RATES: Tuple[float, ...] = (1.18, 1.05, 0.88, 1.0, 0.97, 0.92)

# Pairs of clinically related categories; a second label is drawn preferentially
# from the related set of the first.
_RELATED: Dict[int, Tuple[int, ...]] = {
    0: (1, 2, 3),  # cardiology  <-> pulm, nephro, endo
    1: (0, 4),  # pulmonology <-> cardio, ID
    2: (0, 3, 4),  # nephrology  <-> cardio, endo, ID
    3: (2, 0),  # endocrinology <-> nephro, cardio
    4: (1, 5, 2),  # ID <-> pulm, neuro, nephro
    5: (0, 4),  # neurology <-> cardio (stroke/AF), ID (meningitis)
}

_Vocab = Dict[str, Sequence[str]]

# ---------------------------------------------------------------------------
# Category vocabularies. Shared / overlapping terms are intentionally repeated
# across the lists of related categories.
# ---------------------------------------------------------------------------
_VOCAB: Tuple[_Vocab, ...] = (
    # 0 cardiology
    {
        "cc": (
            "chest pain", "palpitations", "chest pressure", "SOB on exertion",
            "leg swelling", "near syncope", "irregular heartbeat", "dyspnea",
        ),
        "sym": (
            "substernal chest pressure radiating to the L arm", "palpitations",
            "dyspnea on exertion", "orthopnea", "PND", "bilateral LE edema",
            "exertional chest tightness", "lightheadedness", "syncope",
            "diaphoresis with exertion", "decreased exercise tolerance",
        ),
        "hx": (
            "atrial fibrillation", "CAD s/p PCI", "HFrEF", "HTN", "hyperlipidemia",
            "NSTEMI", "aortic stenosis", "CABG x3", "HFpEF", "SVT",
        ),
        "med": (
            "metoprolol succinate 50 mg daily", "apixaban 5 mg BID", "atorvastatin 80 mg qHS",
            "aspirin 81 mg daily", "furosemide 40 mg daily", "lisinopril 10 mg daily",
            "clopidogrel 75 mg daily", "sacubitril-valsartan 24-26 mg BID",
            "amiodarone 200 mg daily", "diltiazem 120 mg daily", "spironolactone 25 mg daily",
            "nitroglycerin SL PRN",
        ),
        "exam": (
            "irregularly irregular rhythm", "S3 gallop", "JVD to the angle of the jaw",
            "2/6 systolic murmur at RUSB", "1+ pitting edema bilaterally",
            "bibasilar crackles", "displaced PMI",
        ),
        "test": (
            "troponin {trop} ng/L", "BNP {bnp} pg/mL", "ECG with ST depressions in V4-V6",
            "ECG showing AF with RVR", "echocardiogram with EF {ef}%",
            "TTE with moderate LV dysfunction", "telemetry with runs of NSVT",
            "CXR with cardiomegaly", "stress test with inferior ischemia",
        ),
        "dx": (
            "NSTEMI", "atrial fibrillation with RVR", "acute on chronic HFrEF exacerbation",
            "unstable angina", "hypertensive urgency", "symptomatic bradycardia",
            "new onset AF", "decompensated heart failure", "severe aortic stenosis",
        ),
        "plan": (
            "cardiology consult for cath", "start heparin drip", "trend troponins q6h",
            "uptitrate metoprolol for rate control", "continue apixaban for anticoagulation",
            "IV furosemide diuresis, strict I/Os, daily weights", "repeat echocardiogram",
            "CHA2DS2-VASc calculated, anticoagulate", "cardiac rehab referral",
            "check lipid panel, high intensity statin",
        ),
    },
    # 1 pulmonology
    {
        "cc": (
            "shortness of breath", "cough", "wheezing", "SOB", "hemoptysis",
            "worsening dyspnea", "productive cough",
        ),
        "sym": (
            "productive cough with green sputum", "wheezing", "dyspnea on exertion",
            "pleuritic chest pain", "hemoptysis", "increased sputum production",
            "nocturnal cough", "chest tightness", "fever", "bilateral LE edema",
            "increased inhaler use",
        ),
        "hx": (
            "COPD", "asthma", "OSA on CPAP", "pulmonary fibrosis", "40 pack-year smoking history",
            "prior PE", "sarcoidosis", "bronchiectasis", "home O2 2L",
        ),
        "med": (
            "albuterol MDI 2 puffs q4h PRN", "tiotropium 18 mcg daily",
            "fluticasone-salmeterol 250/50 BID", "prednisone 40 mg daily",
            "budesonide-formoterol BID", "azithromycin 250 mg daily", "montelukast 10 mg qHS",
            "ipratropium nebs q6h", "roflumilast 500 mcg daily",
        ),
        "exam": (
            "diffuse expiratory wheezes", "prolonged expiratory phase", "decreased breath sounds at R base",
            "accessory muscle use", "coarse rhonchi bilaterally", "dry velcro crackles at bases",
            "dullness to percussion L base", "speaking in short sentences",
        ),
        "test": (
            "ABG 7.{ph}/{pco2}/{po2}", "CXR with hyperinflation", "CT chest with ground glass opacities",
            "PFTs with FEV1/FVC {ratio}", "CTA chest negative for PE", "CXR with R lower lobe consolidation",
            "peak flow {pf} L/min", "CT chest with emphysematous changes",
            "CXR with small L pleural effusion",
        ),
        "dx": (
            "COPD exacerbation", "acute asthma exacerbation", "community acquired pneumonia",
            "acute hypoxic respiratory failure", "pulmonary embolism", "ILD flare",
            "pleural effusion", "acute on chronic hypercapnic respiratory failure",
        ),
        "plan": (
            "duonebs q4h", "prednisone burst x5 days", "wean O2 to SpO2 88-92%",
            "BiPAP overnight", "pulmonology f/u with repeat PFTs", "incentive spirometry",
            "smoking cessation counseling, nicotine patch", "thoracentesis with fluid studies",
            "ambulatory O2 assessment", "start inhaled corticosteroid",
        ),
    },
    # 2 nephrology
    {
        "cc": (
            "abnormal labs", "leg swelling", "decreased urine output", "elevated creatinine",
            "fatigue", "foamy urine",
        ),
        "sym": (
            "decreased urine output", "bilateral LE edema", "foamy urine", "dyspnea on exertion",
            "nausea and poor appetite", "pruritus", "flank pain", "muscle cramps",
            "generalized fatigue",
        ),
        "hx": (
            "CKD stage 3b", "ESRD on HD MWF", "diabetes mellitus type 2", "HTN",
            "nephrotic syndrome", "polycystic kidney disease", "kidney transplant 2015",
            "recurrent nephrolithiasis", "IgA nephropathy",
        ),
        "med": (
            "sevelamer 800 mg TID with meals", "calcitriol 0.25 mcg daily", "sodium bicarbonate 650 mg BID",
            "furosemide 80 mg BID", "tacrolimus 2 mg BID", "epoetin alfa weekly",
            "losartan 50 mg daily", "patiromer 8.4 g daily", "tamsulosin 0.4 mg qHS",
        ),
        "exam": (
            "2+ pitting edema to the knees", "AV fistula L arm with good thrill and bruit",
            "CVA tenderness on R", "periorbital edema", "uremic fetor", "asterixis absent",
        ),
        "test": (
            "creatinine {cr} (baseline 1.4)", "K {k_high}", "BUN {bun}", "eGFR {egfr}",
            "UA with 3+ protein", "urine protein/creatinine ratio {upcr} g/g",
            "renal US with bilateral small echogenic kidneys", "FENa {fena}%",
            "bicarbonate {bicarb_low}", "PTH {pth}",
        ),
        "dx": (
            "AKI on CKD", "hyperkalemia", "prerenal AKI", "ATN", "nephrotic syndrome",
            "volume overload in ESRD", "obstructive uropathy", "non-anion gap metabolic acidosis",
            "CKD stage 4 progression",
        ),
        "plan": (
            "renal consult for HD", "hold ACEi and nephrotoxins", "renally dose all meds",
            "IV fluids and recheck BMP in AM", "Foley and strict I/Os", "low potassium diet",
            "calcium gluconate, insulin/dextrose, kayexalate", "avoid IV contrast",
            "nephrology f/u, discuss AV fistula placement", "bladder scan for retention",
        ),
    },
    # 3 endocrinology
    {
        "cc": (
            "high blood sugars", "weight loss", "fatigue", "polyuria", "palpitations",
            "low blood sugar", "neck swelling",
        ),
        "sym": (
            "polyuria and polydipsia", "unintentional weight loss", "heat intolerance", "cold intolerance",
            "tremor", "palpitations", "blurry vision", "hypoglycemic episodes", "numbness in feet",
            "generalized fatigue", "constipation",
        ),
        "hx": (
            "diabetes mellitus type 2", "type 1 diabetes", "hypothyroidism", "Graves disease",
            "CKD stage 3a", "hyperlipidemia", "adrenal insufficiency", "thyroid nodule",
            "osteoporosis", "PCOS",
        ),
        "med": (
            "metformin 1000 mg BID", "insulin glargine {ins} units qHS", "insulin lispro sliding scale",
            "levothyroxine 75 mcg daily", "empagliflozin 10 mg daily", "semaglutide 1 mg weekly",
            "methimazole 10 mg daily", "hydrocortisone 20 mg AM 10 mg PM", "glipizide 5 mg daily",
            "alendronate 70 mg weekly",
        ),
        "exam": (
            "diffusely enlarged nontender thyroid", "fine tremor of outstretched hands",
            "decreased monofilament sensation bilateral feet", "acanthosis nigricans",
            "lid lag", "dry mucous membranes", "moon facies",
        ),
        "test": (
            "HbA1c {a1c}%", "glucose {glu_high}", "TSH {tsh}", "free T4 {ft4}",
            "anion gap {gap}", "beta-hydroxybutyrate {bhb}", "AM cortisol {cort}",
            "thyroid US with 1.8 cm nodule", "urine microalbumin elevated", "fingerstick glucose {glu_low}",
        ),
        "dx": (
            "DKA", "uncontrolled diabetes mellitus type 2", "hyperthyroidism", "hypothyroidism",
            "hypoglycemia", "HHS", "adrenal insufficiency", "thyroid nodule", "diabetic neuropathy",
        ),
        "plan": (
            "insulin drip per DKA protocol", "q1h fingersticks", "titrate basal insulin",
            "diabetes education", "endocrinology f/u in 3 months", "repeat TSH in 6 weeks",
            "FNA of thyroid nodule", "stress dose steroids", "dietitian referral",
            "annual retinal exam and foot care",
        ),
    },
    # 4 infectious disease
    {
        "cc": (
            "fever", "chills", "fever and cough", "painful red leg", "dysuria", "wound drainage",
            "rigors",
        ),
        "sym": (
            "fevers to 39.2", "rigors", "night sweats", "cough", "dysuria and urinary frequency",
            "erythema and warmth of the R leg", "purulent wound drainage", "diarrhea",
            "myalgias", "headache", "altered mental status",
        ),
        "hx": (
            "HIV on ART", "recurrent UTIs", "MRSA bacteremia", "hepatitis C", "C diff colitis",
            "IVDU", "splenectomy", "latent TB treated",
        ),
        "med": (
            "vancomycin IV per pharmacy", "piperacillin-tazobactam 4.5 g q8h", "ceftriaxone 1 g daily",
            "cefazolin 2 g q8h", "doxycycline 100 mg BID", "bictegravir/emtricitabine/TAF daily",
            "oral vancomycin 125 mg QID", "nitrofurantoin 100 mg BID", "TMP-SMX DS BID",
        ),
        "exam": (
            "erythematous, warm, tender R lower leg", "fluctuant area concerning for abscess",
            "new holosystolic murmur", "suprapubic tenderness", "track marks bilateral arms",
            "nuchal rigidity", "oral thrush",
        ),
        "test": (
            "WBC {wbc_high}", "lactate {lactate}", "procalcitonin {pct}", "blood cultures x2 pending",
            "blood cultures growing GPC in clusters", "UA with positive leukocyte esterase and nitrites",
            "CD4 count {cd4}", "LP with WBC {csf} and low glucose", "C diff PCR positive",
            "respiratory viral panel positive for influenza A",
        ),
        "dx": (
            "sepsis", "cellulitis", "MRSA bacteremia", "pyelonephritis", "community acquired pneumonia",
            "C diff colitis", "bacterial meningitis", "infective endocarditis", "influenza",
        ),
        "plan": (
            "ID consult", "follow blood cultures and sensitivities", "TTE to r/o endocarditis",
            "broad spectrum abx, narrow per cultures", "30 mL/kg IV fluid bolus", "contact precautions",
            "PICC for 6 weeks IV abx", "I&D of abscess", "droplet precautions, oseltamivir",
            "repeat lactate in 2h",
        ),
    },
    # 5 neurology
    {
        "cc": (
            "headache", "weakness", "seizure", "dizziness", "facial droop", "numbness",
            "confusion", "slurred speech",
        ),
        "sym": (
            "L sided weakness", "slurred speech", "R facial droop", "worst headache of life",
            "generalized tonic-clonic seizure", "vertigo", "diplopia", "tingling in both hands",
            "gait instability", "memory difficulties", "syncope", "altered mental status",
        ),
        "hx": (
            "epilepsy", "prior CVA", "migraine with aura", "multiple sclerosis", "Parkinson disease",
            "dementia", "TIA", "peripheral neuropathy",
        ),
        "med": (
            "levetiracetam 500 mg BID", "sumatriptan 50 mg PRN", "topiramate 50 mg BID",
            "carbidopa-levodopa 25/100 TID", "donepezil 10 mg qHS", "gabapentin 300 mg TID",
            "ocrelizumab q6 months", "lamotrigine 100 mg BID", "clopidogrel 75 mg daily",
        ),
        "exam": (
            "NIHSS {nihss}", "L pronator drift", "dysarthria", "R hemiparesis 3/5",
            "positive Romberg", "resting tremor and cogwheel rigidity", "horizontal nystagmus",
            "hyperreflexia with upgoing toes", "oriented x1",
        ),
        "test": (
            "CT head without hemorrhage", "MRI brain with acute L MCA infarct",
            "EEG with epileptiform discharges",
            "CTA head/neck with M1 occlusion", "MRI with periventricular white matter lesions",
            "levetiracetam level pending", "LP with oligoclonal bands", "EMG/NCS with axonal neuropathy",
        ),
        "dx": (
            "acute ischemic stroke", "breakthrough seizure", "migraine without aura", "TIA",
            "MS flare", "status epilepticus", "Parkinson disease", "BPPV", "subarachnoid hemorrhage",
        ),
        "plan": (
            "stroke code, tPA considered", "neuro checks q1h", "seizure precautions",
            "load levetiracetam", "neurology consult", "MRI brain with and without contrast",
            "PT/OT and speech eval", "IV methylprednisolone x3 days", "swallow eval before PO",
            "permissive HTN for 24h",
        ),
    },
)

# ---------------------------------------------------------------------------
# Generic vocabulary shared by every note.
# ---------------------------------------------------------------------------
_GENERIC_HX = (
    "HTN", "hyperlipidemia", "GERD", "obesity", "depression", "anxiety", "BPH", "hypothyroidism",
    "osteoarthritis", "iron deficiency anemia", "chronic low back pain", "insomnia",
)
_GENERIC_MED = (
    "omeprazole 20 mg daily", "acetaminophen 650 mg q6h PRN", "sertraline 50 mg daily",
    "vitamin D3 1000 IU daily", "docusate 100 mg BID", "melatonin 3 mg qHS", "multivitamin daily",
    "pantoprazole 40 mg daily", "amlodipine 5 mg daily", "ferrous sulfate 325 mg daily",
)
_SOCIAL = (
    "Lives with spouse, independent in ADLs.", "Lives alone. Former smoker, quit 10 yrs ago.",
    "Denies tobacco, EtOH socially, no illicit drugs.", "Retired teacher, lives with daughter.",
    "Current smoker 1 ppd. Drinks 2-3 beers/day.", "Works in construction. No tobacco.",
    "Lives in assisted living, uses walker.", "Never smoker, no EtOH.",
    "Lives with partner and two children.", "Former smoker, 20 pack-years.",
)
_FOLLOW_UP = (
    "F/u with PCP in 1-2 weeks.", "Return precautions reviewed, pt verbalized understanding.",
    "Dispo: likely home in 24-48h.", "Code status: full code.", "DVT ppx with SQ heparin.",
    "Discussed plan with pt and family at bedside.", "Code status: DNR/DNI, confirmed with pt.",
    "PT eval prior to discharge.", "Med rec completed.", "Diet: cardiac/consistent carb.",
)
_GENERIC_EXAM = (
    "NAD, A&Ox3", "alert, cooperative", "mildly uncomfortable appearing", "well appearing",
    "pleasant, in no distress",
)
_GENERIC_LABS = (
    "Hgb {hgb}", "Na {na}", "Plt {plt}", "glucose {glu}", "WBC {wbc}", "Cr {cr_norm}",
    "BMP otherwise unremarkable", "CBC unremarkable", "LFTs WNL", "Mg {mg}",
)
_DURATIONS = (
    "x 2 days", "x 3 days", "x 1 week", "since yesterday", "for several hours", "x 2 weeks",
    "x 5 days", "over the past month", "since this morning", "x 48h",
)
_NEG_GENERIC = (
    "nausea", "vomiting", "abdominal pain", "melena", "BRBPR", "rash", "recent travel",
    "sick contacts", "weight change", "joint pain",
)
_NEG_TEMPLATES = ("Denies {x}.", "No {x}.", "Pt denies {x}.", "Negative for {x}.", "Without {x}.")
# Distractor sentences: a symptom of an unlabelled category is negated, a diagnosis of an
# unlabelled category appears in family / remote history or is ruled out.
_DISTRACT_SYM_TEMPLATES = (
    "Denies {x}.", "No {x}.", "Pt denies {x}.", "Negative for {x}.", "No associated {x}.",
    "Denies any {x} at this time.",
)
_DISTRACT_DX_TEMPLATES = (
    "FHx of {x} in mother.", "FHx: father with {x}.", "Remote h/o {x}, resolved.",
    "Pt worried about {x}, reassured.", "No prior {x}.", "Denies h/o {x}.",
    "Brother recently dx with {x}.", "Prior workup for {x} negative.",
)
_DISTRACT_KEYS = ("sym", "cc", "dx", "hx")
_NON_SPECIFIC = frozenset({"fatigue", "generalized fatigue", "abnormal labs", "HTN", "hyperlipidemia"})

# Problem names that do not single out one specialty (used for weakly specified notes).
_AMBIGUOUS: Dict[int, Tuple[str, ...]] = {
    0: ("dyspnea, likely multifactorial", "volume overload", "syncope, unclear etiology",
        "chest pain", "HTN", "bilateral LE edema", "fatigue"),
    1: ("dyspnea, likely multifactorial", "fever and cough", "hypoxia", "chest pain", "cough",
        "SOB"),
    2: ("volume overload", "bilateral LE edema", "electrolyte abnormalities", "HTN",
        "diabetes mellitus type 2 with CKD", "fatigue"),
    3: ("diabetes mellitus type 2 with CKD", "fatigue", "weight loss", "electrolyte abnormalities",
        "palpitations", "hyperglycemia"),
    4: ("fever, unclear source", "fever and cough", "altered mental status", "leukocytosis",
        "SIRS", "diarrhea"),
    5: ("altered mental status", "syncope, unclear etiology", "headache", "dizziness",
        "fall at home", "fatigue"),
}
_GENERIC_CC = (
    "fatigue", "generalized weakness", "f/u visit", "abnormal labs", "fall", "hospital f/u",
    "not feeling well",
)
_GENERIC_SYM = (
    "generalized fatigue", "poor PO intake", "malaise", "poor sleep", "decreased appetite",
    "generalized weakness",
)
_GENERIC_EXAM_FINDINGS = (
    "RRR, no m/r/g", "CTAB", "abd soft, NT/ND", "no edema", "CN II-XII intact", "skin warm and dry",
    "moves all extremities", "no focal deficits",
)
_GENERIC_PLAN = (
    "supportive care, monitor", "trend labs", "further workup as outpatient", "monitor closely",
    "consult specialty service", "serial exams", "reassess in AM",
)
_CHRONIC_PLAN = (
    "continue home meds", "stable, continue current regimen", "chronic, no changes",
    "f/u with outpatient specialist", "continue home regimen",
)

_CC_HEADERS = ("CC:", "Chief complaint:", "Reason for visit:", "CC -")
_HPI_HEADERS = ("HPI:", "History of present illness:", "HPI -")
_PMH_HEADERS = ("PMH:", "Past medical history:", "PMHx:")
_MED_HEADERS = ("Meds:", "Medications:", "Home meds:", "Current medications:")
_SH_HEADERS = ("SH:", "Social hx:", "Social history:")
_EXAM_HEADERS = ("Exam:", "PE:", "Physical exam:")
_LAB_HEADERS = ("Labs/imaging:", "Data:", "Results:", "Labs:")
_AP_HEADERS = ("A/P:", "Assessment and plan:", "Assessment/Plan:", "Impression/plan:")
_PRESENT = ("presenting with", "who presents with", "here for", "c/o", "admitted with", "seen for")
_SETTINGS = (
    "Seen in ED.", "Seen in clinic.", "Evaluated on the floor.", "Seen in urgent care.",
    "Transferred from the ICU.", "Telehealth visit.",
)
# Terms that only fit one sex; filtered out of the vocabulary for the other.
_SEX_ONLY = {"BPH": "M", "PCOS": "F"}


def _num_fill(rng: random.Random) -> Dict[str, Callable[[], str]]:
    """Placeholder -> sampler for the numeric fields in the templates."""
    u, r = rng.uniform, rng.randint
    return {
        "trop": lambda: str(r(30, 2400)),
        "bnp": lambda: str(r(250, 3800)),
        "ef": lambda: str(r(15, 45)),
        "ph": lambda: str(r(18, 38)),
        "pco2": lambda: str(r(38, 78)),
        "po2": lambda: str(r(52, 90)),
        "ratio": lambda: f"{u(0.38, 0.68):.2f}",
        "pf": lambda: str(r(120, 380)),
        "cr": lambda: f"{u(1.8, 6.5):.1f}",
        "k_high": lambda: f"{u(5.3, 7.1):.1f}",
        "bun": lambda: str(r(35, 110)),
        "egfr": lambda: str(r(8, 42)),
        "upcr": lambda: f"{u(1.2, 9.5):.1f}",
        "fena": lambda: f"{u(0.2, 3.5):.1f}",
        "bicarb_low": lambda: str(r(12, 19)),
        "pth": lambda: str(r(90, 480)),
        "ins": lambda: str(r(8, 60)),
        "a1c": lambda: f"{u(7.4, 13.9):.1f}",
        "glu_high": lambda: str(r(260, 780)),
        "glu_low": lambda: str(r(38, 62)),
        "tsh": lambda: rng.choice((f"{u(0.005, 0.09):.3f}", f"{u(8.5, 42.0):.1f}")),
        "ft4": lambda: f"{u(0.3, 4.2):.1f}",
        "gap": lambda: str(r(18, 32)),
        "bhb": lambda: f"{u(2.1, 8.4):.1f}",
        "cort": lambda: f"{u(1.1, 4.9):.1f}",
        "wbc_high": lambda: f"{u(13.0, 28.0):.1f}",
        "lactate": lambda: f"{u(2.2, 6.1):.1f}",
        "pct": lambda: f"{u(0.6, 18.0):.1f}",
        "cd4": lambda: str(r(40, 480)),
        "csf": lambda: str(r(180, 2400)),
        "nihss": lambda: str(r(2, 19)),
        "hgb": lambda: f"{u(8.9, 15.4):.1f}",
        "na": lambda: str(r(131, 144)),
        "plt": lambda: str(r(140, 390)),
        "glu": lambda: str(r(82, 168)),
        "wbc": lambda: f"{u(4.5, 10.8):.1f}",
        "cr_norm": lambda: f"{u(0.6, 1.3):.1f}",
        "mg": lambda: f"{u(1.6, 2.4):.1f}",
    }


def _fill(template: str, fills: Dict[str, Callable[[], str]]) -> str:
    if "{" not in template:
        return template
    out: List[str] = []
    i = 0
    while True:
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            return "".join(out)
        k = template.index("}", j)
        out.append(template[i:j])
        out.append(fills[template[j + 1:k]]())
        i = k + 1


def _join(items: Sequence[str], conj: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {conj} {items[1]}"
    return ", ".join(items[:-1]) + f", {conj} {items[-1]}"


def _sample_labels(
    rng: random.Random, cum_weights: List[float], max_labels: int, p_multi: float
) -> List[int]:
    n_cat = len(CATEGORIES)
    primary = rng.choices(range(n_cat), cum_weights=cum_weights)[0]
    labels = [primary]
    if max_labels >= 2 and rng.random() < p_multi:
        k = rng.randint(2, max_labels)
        while len(labels) < k:
            related = [c for c in _RELATED[primary] if c not in labels]
            if related and rng.random() < 0.65:
                labels.append(rng.choice(related))
            else:
                labels.append(rng.choice([c for c in range(n_cat) if c not in labels]))
    return labels


def _vitals(rng: random.Random, labels: List[int]) -> str:
    febrile = 4 in labels and rng.random() < 0.7 or (1 in labels and rng.random() < 0.2)
    temp = rng.uniform(38.1, 39.6) if febrile else rng.uniform(36.2, 37.6)
    hr = rng.randint(88, 132) if (febrile or (0 in labels and rng.random() < 0.4)) else rng.randint(58, 98)
    sbp = rng.randint(96, 188)
    dbp = rng.randint(54, min(110, sbp - 30))
    rr = rng.randint(20, 30) if (1 in labels and rng.random() < 0.6) else rng.randint(12, 20)
    spo2 = rng.randint(84, 93) if (1 in labels and rng.random() < 0.6) else rng.randint(94, 100)
    o2 = rng.choice(("RA", "RA", "2L NC", "4L NC")) if spo2 < 94 else rng.choice(("RA", "RA", "RA", "2L NC"))
    style = rng.randrange(3)
    if style == 0:
        return f"Vitals: T {temp:.1f} HR {hr} BP {sbp}/{dbp} RR {rr} SpO2 {spo2}% {o2}."
    if style == 1:
        return f"VS: T {temp:.1f}C, P {hr}, BP {sbp}/{dbp}, RR {rr}, O2 sat {spo2}% on {o2}."
    return f"Vitals notable for BP {sbp}/{dbp}, HR {hr}, T {temp:.1f}, SpO2 {spo2}% {o2}."


def _note(rng: random.Random, labels: List[int], fills: Dict[str, Callable[[], str]]) -> str:
    primary = labels[0]
    V = [_VOCAB[c] for c in labels]
    P = V[0]
    other = [c for c in range(len(CATEGORIES)) if c not in labels]
    # Signal strength varies from note to note: weak notes carry little specific vocabulary.
    strength = rng.random()
    n_sym = 1 + (strength > 0.4) + (strength > 0.85)
    n_items = 1 + (strength > 0.6)
    p_secondary = 0.35 + 0.5 * strength  # how often a secondary label shows up in a section

    sex_key = rng.choice("MF")
    sex = rng.choice(("M", "male", "man") if sex_key == "M" else ("F", "female", "woman"))

    def fits(term: str) -> bool:
        return _SEX_ONLY.get(term, sex_key) == sex_key

    generic_hx = [t for t in _GENERIC_HX if fits(t)]

    def pick(vocab: _Vocab, key: str, k: int) -> List[str]:
        pool = [t for t in vocab[key] if fits(t)]
        return [_fill(t, fills) for t in rng.sample(pool, min(k, len(pool)))]

    def mixed(key: str, k_primary: int, k_other: int) -> List[str]:
        out = pick(P, key, k_primary)
        for v in V[1:]:
            if rng.random() < p_secondary:
                out += pick(v, key, k_other)
        return list(dict.fromkeys(out))

    # Comorbidity from an unlabelled specialty (chronic problem, not the reason for the note).
    comorb = rng.choice(other) if other and rng.random() < 0.35 else None

    age = rng.randint(19, 94)
    yo = rng.choice(("y/o", "yo", "year old", "YO"))

    parts: List[str] = []
    # Chief complaint: mostly from the primary label, sometimes generic or ambiguous.
    u = rng.random()
    if u < 0.7:
        cc = rng.choice(P["cc"])
    elif u < 0.85:
        cc = rng.choice(_AMBIGUOUS[primary])
    else:
        cc = rng.choice(_GENERIC_CC)
    parts.append(f"{rng.choice(_CC_HEADERS)} {cc}")

    # HPI
    hpi_hx = mixed("hx", 1, 1) if rng.random() < 0.6 else [rng.choice(generic_hx)]
    if comorb is not None and rng.random() < 0.5:
        hpi_hx.append(pick(_VOCAB[comorb], "hx", 1)[0])
    elif rng.random() < 0.5:
        hpi_hx.append(rng.choice(generic_hx))
    hpi_hx = list(dict.fromkeys(hpi_hx))
    syms = mixed("sym", n_sym, 1)
    if rng.random() < 0.35:
        syms.append(rng.choice(_GENERIC_SYM))
    hpi = (
        f"{rng.choice(_HPI_HEADERS)} {age} {yo} {sex} w/ h/o {_join(hpi_hx)} "
        f"{rng.choice(_PRESENT)} {_join(syms)} {rng.choice(_DURATIONS)}."
    )
    extra: List[str] = []
    if rng.random() < 0.4:
        extra.append(rng.choice(_SETTINGS))
    negs = rng.sample(_NEG_GENERIC, rng.randint(1, 2))
    extra.append(rng.choice(_NEG_TEMPLATES).format(x=_join(negs, "or")))
    # Distractors: terms from an unlabelled category, negated or in past/family history.
    n_distract = rng.choices((0, 1, 2), weights=(0.3, 0.45, 0.25))[0]
    for _ in range(n_distract):
        oc = rng.choice(other) if other else primary
        key = rng.choice(_DISTRACT_KEYS)
        pool = [t for t in _VOCAB[oc][key] if t not in _NON_SPECIFIC and fits(t)]
        templates = _DISTRACT_SYM_TEMPLATES if key in ("sym", "cc") else _DISTRACT_DX_TEMPLATES
        extra.append(rng.choice(templates).format(x=_fill(rng.choice(pool), fills)))
    rng.shuffle(extra)
    parts.append(hpi + " " + " ".join(extra))

    # PMH
    if rng.random() < 0.75:
        pmh = mixed("hx", n_items, 1) + rng.sample(generic_hx, rng.randint(1, 3))
        if comorb is not None:
            pmh.append(pick(_VOCAB[comorb], "hx", 1)[0])
        pmh = list(dict.fromkeys(pmh))
        rng.shuffle(pmh)
        parts.append(f"{rng.choice(_PMH_HEADERS)} {', '.join(pmh)}.")

    # Meds
    if rng.random() < 0.8:
        meds = mixed("med", n_items, 1) + rng.sample(_GENERIC_MED, rng.randint(0, 2))
        if comorb is not None and rng.random() < 0.7:
            meds.append(_fill(rng.choice(_VOCAB[comorb]["med"]), fills))
        meds = list(dict.fromkeys(meds))
        rng.shuffle(meds)
        parts.append(f"{rng.choice(_MED_HEADERS)} {', '.join(meds)}.")

    if rng.random() < 0.55:
        parts.append(f"{rng.choice(_SH_HEADERS)} {rng.choice(_SOCIAL)}")

    parts.append(_vitals(rng, labels))

    exam = [rng.choice(_GENERIC_EXAM)]
    if rng.random() < 0.2 + 0.6 * strength:
        exam += mixed("exam", 1, 1)
    if rng.random() < 0.5:
        exam.append(rng.choice(_GENERIC_EXAM_FINDINGS))
    parts.append(f"{rng.choice(_EXAM_HEADERS)} {'; '.join(exam)}.")

    labs = [_fill(t, fills) for t in rng.sample(_GENERIC_LABS, rng.randint(1, 3))]
    if rng.random() < 0.3 + 0.6 * strength:
        labs += mixed("test", n_items, 1)
    rng.shuffle(labs)
    parts.append(f"{rng.choice(_LAB_HEADERS)} {', '.join(labs)}.")

    # Assessment and plan: one problem per label (weak notes use an ambiguous problem name),
    # plus sometimes the chronic comorbidity from an unlabelled specialty.
    ap = [rng.choice(_AP_HEADERS)]
    problems: List[Tuple[str, List[str]]] = []
    for c, v in zip(labels, V):
        if rng.random() < 0.55 - 0.45 * strength:
            dx = rng.choice(_AMBIGUOUS[c])
        else:
            dx = rng.choice(v["dx"])
        if rng.random() < 0.3 + 0.6 * strength:
            plans = pick(v, "plan", 1 + (rng.random() < strength * 0.6))
        else:
            plans = rng.sample(_GENERIC_PLAN, 1)
        problems.append((dx, plans))
    if comorb is not None and rng.random() < 0.6:
        problems.append((pick(_VOCAB[comorb], "hx", 1)[0], rng.sample(_CHRONIC_PLAN, 1)))
    for i, (dx, plans) in enumerate(problems, 1):
        ap.append(f"#{i} {dx}: {'; '.join(plans)}.")
    ap.extend(rng.sample(_FOLLOW_UP, rng.randint(1, 2)))
    parts.append(" ".join(ap))

    sep = "\n" if rng.random() < 0.6 else " "
    return sep.join(parts)


def generate_notes(
    n_docs: int = 1200, seed: int = 0, max_labels: int = 2, p_multi: float = 0.25
) -> dict:
    """Generate ``n_docs`` synthetic multi-label clinical notes.

    Args:
        n_docs: number of notes (>= 1).
        seed: RNG seed; the output is a deterministic function of all arguments.
        max_labels: maximum number of labels per note (1..len(CATEGORIES)).
        p_multi: probability that a note is multi-label (2..max_labels labels);
            ignored when ``max_labels == 1``.

    Returns:
        ``{"text": list[str], "labels": list[list[int]], "label_names": list[str]}``
        where each ``labels[i]`` is a non-empty list of distinct indices into
        ``label_names`` (== ``list(CATEGORIES)``), primary label first.
    """
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
        raise ValueError(f"n_docs must be a positive integer, got {n_docs!r}")
    n_cat = len(CATEGORIES)
    if isinstance(max_labels, bool) or not isinstance(max_labels, int) or not 1 <= max_labels <= n_cat:
        raise ValueError(f"max_labels must be an integer in [1, {n_cat}], got {max_labels!r}")
    try:
        p = float(p_multi)
    except (TypeError, ValueError):
        raise ValueError(f"p_multi must be a number in [0, 1], got {p_multi!r}") from None
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"p_multi must be in [0, 1], got {p_multi!r}")

    rng = random.Random(seed)
    fills = _num_fill(rng)
    cum: List[float] = []
    acc = 0.0
    for w in _BASE_RATES:
        acc += w
        cum.append(acc)

    texts: List[str] = []
    labels: List[List[int]] = []
    for _ in range(n_docs):
        lab = _sample_labels(rng, cum, max_labels, p)
        texts.append(_note(rng, lab, fills))
        labels.append(lab)
    return {"text": texts, "labels": labels, "label_names": list(CATEGORIES)}

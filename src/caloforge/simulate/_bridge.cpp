// caloforge Geant4 bridge: data-free EM physics and a C++ step collector.
//
// geant4_pybind ships the Geant4 libraries but neither headers nor bindings for the
// EM process classes. This file therefore declares only the handful of public
// Geant4 entry points it calls (names and signatures as exported by the library)
// and never relies on a class layout, except for three documented G4Step/G4StepPoint
// fields read in cf_process_hits (checked against the Python accessors by the tests).
//
// Objects are created by calling the library's real constructors on generously
// over-allocated memory, so the (unknown to us) sizeof of each class never matters.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------
// Minimal declarations of the Geant4 API used here.
// ---------------------------------------------------------------------------

// G4String derives from std::string and adds no data, so passing a reference to
// this type is ABI-identical to passing a real G4String.
class G4String : public std::string {
 public:
  explicit G4String(const char* s) : std::string(s) {}
};

enum G4ProcessType { fElectromagnetic = 2 };

class G4ParticleDefinition;
class G4VProcess;
class G4VEmModel;
class G4Step;
class G4TouchableHistory;

class G4Gamma {
 public:
  static G4ParticleDefinition* Gamma();
};
class G4Electron {
 public:
  static G4ParticleDefinition* Electron();
};
class G4Positron {
 public:
  static G4ParticleDefinition* Positron();
};

class G4PhysicsListHelper {
 public:
  static G4PhysicsListHelper* GetPhysicsListHelper();
  bool RegisterProcess(G4VProcess* process, G4ParticleDefinition* particle);
};

class G4PhotoElectricEffect {
 public:
  G4PhotoElectricEffect(const G4String& name, G4ProcessType type);
};
class G4ComptonScattering {
 public:
  G4ComptonScattering(const G4String& name, G4ProcessType type);
};
class G4GammaConversion {
 public:
  G4GammaConversion(const G4String& name, G4ProcessType type);
};
class G4eMultipleScattering {
 public:
  explicit G4eMultipleScattering(const G4String& name);
};
class G4eIonisation {
 public:
  explicit G4eIonisation(const G4String& name);
};
class G4eBremsstrahlung {
 public:
  explicit G4eBremsstrahlung(const G4String& name);
};
class G4eplusAnnihilation {
 public:
  explicit G4eplusAnnihilation(const G4String& name);
};
class G4eBremsstrahlungRelModel {
 public:
  G4eBremsstrahlungRelModel(const G4ParticleDefinition* particle, const G4String& name);
};
class G4VEnergyLossProcess {
 public:
  void SetEmModel(G4VEmModel* model, int index);
};

class G4VSensitiveDetector {
 public:
  explicit G4VSensitiveDetector(const G4String& name);
};
class G4SDManager {
 public:
  static G4SDManager* GetSDMpointer();
  void AddNewDetector(G4VSensitiveDetector* detector);
};
class G4LogicalVolume {
 public:
  void SetSensitiveDetector(G4VSensitiveDetector* detector);
};
class G4LogicalVolumeStore {
 public:
  static G4LogicalVolumeStore* GetInstance();
  G4LogicalVolume* GetVolume(const G4String& name, bool verbose, bool reverseSearch) const;
};

extern "C" void __cxa_pure_virtual();

namespace {

// Upper bound for sizeof of any object constructed here. The real sizes are about
// 1 kB for processes (read off the library's own operator new calls); 64 kB leaves
// ample margin and the handful of objects makes the waste irrelevant.
constexpr std::size_t kObjectBytes = 64 * 1024;

template <typename T, typename... Args>
T* construct(const Args&... args) {
  void* memory = ::operator new(kObjectBytes);
  std::memset(memory, 0, kObjectBytes);
  return new (memory) T(args...);
}

// Every process class used here derives from G4VProcess by single inheritance,
// so the G4VProcess subobject sits at offset 0 and a pointer cast is exact.
template <typename T>
G4VProcess* as_process(T* process) {
  return reinterpret_cast<G4VProcess*>(process);
}

// --- step collector -------------------------------------------------------

// Layout facts of Geant4 11 (G4Step.hh / G4StepPoint.hh): G4Step starts with
// fTotalEnergyDeposit (double), fNonIonizingEnergyDeposit (double), then the
// pre- and post-step point pointers; G4StepPoint starts with fPosition (3 doubles).
constexpr std::size_t kStepEdepOffset = 0;
constexpr std::size_t kStepPrePointOffset = 16;
constexpr std::size_t kStepPostPointOffset = 24;

constexpr std::size_t kSensitiveDetectorBytes = 4096;  // far above sizeof(G4VSensitiveDetector)
constexpr std::size_t kVtablePrefix = 2;  // offset-to-top and typeinfo precede the slots

// One block per silicon layer: the Geant4 object first (so `this` == block) and the
// layer index behind the generous object area.
struct SensitiveDetectorBlock {
  alignas(16) unsigned char object[kSensitiveDetectorBytes];
  std::int32_t layer;
};

std::vector<double> g_hits;   // flat (x, y, layer, edep) records of the current event
std::vector<void*> g_vtable;  // patched copy of G4VSensitiveDetector's vtable

// x and y are taken at the step midpoint, which lies inside the (convex) layer.
bool process_hits(void* self, G4Step* step, G4TouchableHistory* /*unused*/) {
  const auto* raw = reinterpret_cast<const unsigned char*>(step);
  double edep;
  std::memcpy(&edep, raw + kStepEdepOffset, sizeof edep);
  if (!(edep > 0.0)) return false;
  const double* pre;
  const double* post;
  std::memcpy(&pre, raw + kStepPrePointOffset, sizeof pre);
  std::memcpy(&post, raw + kStepPostPointOffset, sizeof post);
  const auto* block = static_cast<const SensitiveDetectorBlock*>(self);
  g_hits.push_back(0.5 * (pre[0] + post[0]));
  g_hits.push_back(0.5 * (pre[1] + post[1]));
  g_hits.push_back(static_cast<double>(block->layer));
  g_hits.push_back(edep);
  return true;
}

// Itanium C++ ABI: a member function receives `this` as its first argument, so
// free functions with an explicit `self` can stand in for virtual members.
using ProcessHitsFn = bool (*)(void*, G4Step*, G4TouchableHistory*);
using DestructorFn = void (*)(void*);

// The base-class vtable of this (abstract) class has null destructor slots; Geant4
// deletes detectors only at teardown, where skipping the members' destructors is
// harmless, so the stand-ins just release the block.
void destroy_complete(void* /*self*/) {}
void destroy_deleting(void* self) { ::operator delete(self); }

// Builds a copy of G4VSensitiveDetector's vtable with its pure virtual slot
// (ProcessHits, the class's only pure virtual) pointing at process_hits. A fixed
// number of slots is copied: entries past the real table are never called.
int prepare_vtable(void** base_vptr) {
  constexpr std::size_t kSlots = 32;
  constexpr std::size_t kDestructorSlots = 2;  // complete and deleting destructor
  int pure = -1;
  for (std::size_t slot = kDestructorSlots; slot < kSlots; ++slot) {
    void* entry = base_vptr[slot];
    if (entry == nullptr) return -1;  // virtual functions are never null: layout not understood
    if (entry == reinterpret_cast<void*>(&__cxa_pure_virtual)) {
      pure = static_cast<int>(slot);
      break;
    }
  }
  if (pure < 0) return -1;
  g_vtable.assign(base_vptr - kVtablePrefix, base_vptr + kSlots);
  void** slots = g_vtable.data() + kVtablePrefix;
  slots[pure] = reinterpret_cast<void*>(static_cast<ProcessHitsFn>(&process_hits));
  if (slots[0] == nullptr) slots[0] = reinterpret_cast<void*>(static_cast<DestructorFn>(&destroy_complete));
  if (slots[1] == nullptr) slots[1] = reinterpret_cast<void*>(static_cast<DestructorFn>(&destroy_deleting));
  return 0;
}

}  // namespace

extern "C" {

// Registers the data-free EM processes for gamma, e- and e+ (call from
// G4VPhysicsConstructor::ConstructProcess). Returns the number of registrations
// that failed (0 on success).
int cf_register_datafree_em() {
  G4PhysicsListHelper* helper = G4PhysicsListHelper::GetPhysicsListHelper();
  G4ParticleDefinition* gamma = G4Gamma::Gamma();
  G4ParticleDefinition* electron = G4Electron::Electron();
  G4ParticleDefinition* positron = G4Positron::Positron();
  int failures = 0;
  auto reg = [&](G4VProcess* process, G4ParticleDefinition* particle) {
    if (!helper->RegisterProcess(process, particle)) ++failures;
  };

  reg(as_process(construct<G4PhotoElectricEffect>(G4String("phot"), fElectromagnetic)), gamma);
  reg(as_process(construct<G4ComptonScattering>(G4String("compt"), fElectromagnetic)), gamma);
  reg(as_process(construct<G4GammaConversion>(G4String("conv"), fElectromagnetic)), gamma);

  for (G4ParticleDefinition* lepton : {electron, positron}) {
    reg(as_process(construct<G4eMultipleScattering>(G4String("msc"))), lepton);
    reg(as_process(construct<G4eIonisation>(G4String("eIoni"))), lepton);
    auto* brem = construct<G4eBremsstrahlung>(G4String("eBrem"));
    // The default low-energy model (Seltzer-Berger) needs G4LEDATA; the
    // relativistic model is analytic, so it covers both energy ranges.
    auto* loss = reinterpret_cast<G4VEnergyLossProcess*>(brem);
    for (int index = 0; index < 2; ++index) {
      auto* model = construct<G4eBremsstrahlungRelModel>(
          static_cast<const G4ParticleDefinition*>(nullptr), G4String("eBremLPM"));
      loss->SetEmModel(reinterpret_cast<G4VEmModel*>(model), index);
    }
    reg(as_process(brem), lepton);
  }
  reg(as_process(construct<G4eplusAnnihilation>(G4String("annihil"))), positron);
  return failures;
}

// Makes the logical volume `volume_name` sensitive, recording its steps with the
// given layer index. Returns 0 on success, a negative code otherwise.
int cf_attach_collector(const char* volume_name, int layer) {
  G4LogicalVolume* volume =
      G4LogicalVolumeStore::GetInstance()->GetVolume(G4String(volume_name), false, false);
  if (volume == nullptr) return -1;

  auto* block = static_cast<SensitiveDetectorBlock*>(::operator new(sizeof(SensitiveDetectorBlock)));
  std::memset(block, 0, sizeof(SensitiveDetectorBlock));
  block->layer = layer;
  std::string name = std::string("collector_") + volume_name;
  auto* detector = new (block->object) G4VSensitiveDetector(G4String(name.c_str()));

  void** base_vptr = *reinterpret_cast<void***>(detector);
  if (g_vtable.empty() && prepare_vtable(base_vptr) != 0) return -2;
  *reinterpret_cast<void***>(detector) = g_vtable.data() + kVtablePrefix;

  G4SDManager::GetSDMpointer()->AddNewDetector(detector);
  volume->SetSensitiveDetector(detector);
  return 0;
}

void cf_clear_hits() { g_hits.clear(); }

std::size_t cf_hit_count() { return g_hits.size() / 4; }

const double* cf_hit_data() { return g_hits.data(); }

}  // extern "C"

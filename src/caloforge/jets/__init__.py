"""Jets as particle clouds: JetNet-layout files (:mod:`.io`), reference jets from Pythia 8 and
FastJet (:mod:`.pythia`), jet observables (:mod:`.observables`) and their evaluation
(:mod:`.evaluate`)."""

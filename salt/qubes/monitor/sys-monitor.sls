{#- dom0 part of sysmon: the sys-monitor qube, its service, the qrexec policy,
    and the agent's service in the qubes pillar names (agent_qubes).
    sudo qubesctl state.show_sls qubes.monitor.sys-monitor
    sudo qubesctl --show-output state.sls qubes.monitor.sys-monitor
    The templates are set up by template-monitor and template-handler
    (docs/deploy.md). -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

sysmon-qube:
  qvm.present:
    - name: {{ sysmon.monitor }}
    - template: {{ sysmon.monitor_template }}
    - label: {{ sysmon.label }}

sysmon-qube-prefs:
  qvm.prefs:
    - name: {{ sysmon.monitor }}
    - template: {{ sysmon.monitor_template }}
    - label: {{ sysmon.label }}
    # No network, ever: sys-monitor only talks qrexec.
    - netvm: ""
    - memory: {{ sysmon.memory }}
    - maxmem: {{ sysmon.maxmem }}
    - vcpus: {{ sysmon.vcpus }}
    - autostart: true
    - require:
      - qvm: sysmon-qube

# The private volume holds every day folder and archive: 2 GiB by default,
# less than 30 qubes' 14 days.  Extended (never shrunk) to private_gib; the
# daemon's max_data_mb ceiling stays below it.
sysmon-qube-volume:
  cmd.run:
    - name: qvm-volume extend {{ sysmon.monitor }}:private {{ sysmon.private_gib * 1024 ** 3 }}
    - unless: test "$(qvm-volume info {{ sysmon.monitor }}:private size)" -ge {{ sysmon.private_gib * 1024 ** 3 }}
    - require:
      - qvm: sysmon-qube

sysmon-qube-service:
  qvm.features:
    - name: {{ sysmon.monitor }}
    # qvm-service sys-monitor sysmon on: /run/qubes-service/sysmon at boot,
    # which the unit's ConditionPathExists waits for.
    - enable:
      - service.sysmon
    - require:
      - qvm: sysmon-qube
{%- for vm in sysmon.agent_qubes %}

# qvm-service --enable {{ vm }} sysmon-agent: sysmon-handler's agent answers
# the polls there from the qube's next boot (Qubes 4.3; docs/deploy.md).
sysmon-agent-{{ vm }}:
  qvm.features:
    - name: {{ vm }}
    - enable:
      - service.sysmon-agent
{%- endfor %}

/etc/qubes/policy.d/30-sysmon.policy:
  file.managed:
    - source: salt://qubes/monitor/files/30-sysmon.policy.jinja
    - template: jinja
    - user: root
    - group: qubes
    - mode: '0664'
    # qvm.present reports success even when qvm-create failed (recorded on
    # 4.3.1 with a missing template): only the chain through the prefs,
    # which fail then, keeps the policy from being written for no qube.
    - require:
      - qvm: sysmon-qube
      - qvm: sysmon-qube-prefs
      - qvm: sysmon-qube-service
      - cmd: sysmon-qube-volume
